"""The MUC plugin's own SQL tables (prefix muc_) in the core's store: persistent rooms, their
affiliations, and the room archive (MAM); SQLAlchemy Core, created when missing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Float, Index, MetaData, String, Table, Text, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from nitro.storage.schema import NEVER_REUSE_IDS, TABLE_OPTIONS, big_id
from nitro.storage.sql_base import Database, translated
from plugins.muc.affiliation import Affiliation
from plugins.muc.history import Entry
from plugins.muc.roomconfig import RoomConfig

# Room and user JIDs are indexed, so their length is bounded: InnoDB keys are at most 3,072 bytes (four
# per utf8mb4 character); the service refuses longer room names and affiliations for longer JIDs.
JID_MAX = 320

metadata = MetaData()

muc_rooms = Table(
    "muc_rooms",
    metadata,
    Column("jid", String(JID_MAX), primary_key=True),
    Column("config", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("subject_from", Text, nullable=False),
    **TABLE_OPTIONS,
)

muc_affiliations = Table(
    "muc_affiliations",
    metadata,
    Column("room", String(JID_MAX), primary_key=True),
    Column("jid", String(JID_MAX), primary_key=True),
    Column("affiliation", String(16), nullable=False),
    **TABLE_OPTIONS,
)

muc_archive = Table(
    "muc_archive",
    metadata,
    Column("id", big_id(), primary_key=True, autoincrement=True),
    Column("room", String(JID_MAX), nullable=False),
    Column("stanza_id", String(64), nullable=False, unique=True),
    Column("stamp", Float, nullable=False),
    Column("sender", Text, nullable=False),
    Column("xml", Text, nullable=False),
    Index("ix_muc_archive_room_id", "room", "id"),
    **TABLE_OPTIONS,
    **NEVER_REUSE_IDS,
)


@dataclass(frozen=True, slots=True)
class StoredRoom:
    jid: str
    config: RoomConfig
    subject: str
    subject_from: str
    affiliations: dict[str, Affiliation]


@dataclass(frozen=True, slots=True)
class Page:
    entries: list[Entry]
    complete: bool


class MucStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.db = Database(engine)

    @translated
    async def create_tables(self) -> None:
        async with self.db.writer.begin() as conn:
            await conn.run_sync(metadata.create_all)

    @translated
    async def load_rooms(self) -> list[StoredRoom]:
        async with self.db.engine.connect() as conn:
            rooms = (await conn.execute(select(muc_rooms))).all()
            rows = (await conn.execute(select(muc_affiliations))).all()
        by_room: dict[str, dict[str, Affiliation]] = {}
        for row in rows:
            by_room.setdefault(row.room, {})[row.jid] = Affiliation(row.affiliation)
        return [
            StoredRoom(
                r.jid, RoomConfig.from_json(r.config), r.subject, r.subject_from, by_room.get(r.jid, {})
            )
            for r in rooms
        ]

    @translated
    async def save_room(
        self,
        jid: str,
        config: RoomConfig,
        subject: str,
        subject_from: str,
        affiliations: dict[str, Affiliation],
    ) -> None:
        """The room as a whole (config, subject, every affiliation), in one transaction."""
        values: dict[str, Any] = {
            "config": config.to_json(),
            "subject": subject,
            "subject_from": subject_from,
        }
        async with self.db.writer.begin() as conn:
            updated = await conn.execute(muc_rooms.update().where(muc_rooms.c.jid == jid).values(**values))
            if updated.rowcount == 0:
                await conn.execute(muc_rooms.insert().values(jid=jid, **values))
            await conn.execute(delete(muc_affiliations).where(muc_affiliations.c.room == jid))
            if affiliations:
                await conn.execute(
                    muc_affiliations.insert(),
                    [{"room": jid, "jid": j, "affiliation": a.value} for j, a in affiliations.items()],
                )

    @translated
    async def delete_room(self, jid: str) -> None:
        async with self.db.writer.begin() as conn:
            await conn.execute(delete(muc_affiliations).where(muc_affiliations.c.room == jid))
            await conn.execute(delete(muc_rooms).where(muc_rooms.c.jid == jid))

    async def archive(self, room: str, entry: Entry) -> None:
        await self.archive_many([(room, entry)])

    @translated
    async def archive_many(self, entries: list[tuple[str, Entry]]) -> None:
        """Messages of one or several rooms, in one transaction."""
        rows = [
            {"room": room, "stanza_id": e.stanza_id, "stamp": e.stamp, "sender": e.sender, "xml": e.xml}
            for room, e in entries
        ]
        async with self.db.writer.begin() as conn:
            await conn.execute(muc_archive.insert(), rows)

    @translated
    async def recent(self, room: str, count: int) -> list[Entry]:
        query = (
            select(muc_archive)
            .where(muc_archive.c.room == room)
            .order_by(muc_archive.c.id.desc())
            .limit(count)
        )
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Entry(r.xml, r.stamp, r.stanza_id, r.sender) for r in reversed(rows)]

    @translated
    async def _position(self, room: str, stanza_id: str) -> int | None:
        query = select(muc_archive.c.id).where(
            muc_archive.c.room == room, muc_archive.c.stanza_id == stanza_id
        )
        async with self.db.engine.connect() as conn:
            found: int | None = (await conn.execute(query)).scalar_one_or_none()
        return found

    async def query(
        self,
        room: str,
        *,
        start: float | None,
        end: float | None,
        after: str | None,
        before: str | None,
        last_page: bool,
        limit: int,
    ) -> Page | None:
        """XEP-0313 §4 with XEP-0059 paging: up to `limit` entries after `after` (or before `before`, or
        the last page), oldest first; None when an id names no message of this room (item-not-found)."""
        conditions = [muc_archive.c.room == room]
        if start is not None:
            conditions.append(muc_archive.c.stamp >= start)
        if end is not None:
            conditions.append(muc_archive.c.stamp <= end)
        for anchor, after_it in ((after, True), (before, False)):
            if anchor is None:
                continue
            position = await self._position(room, anchor)
            if position is None:
                return None
            conditions.append(muc_archive.c.id > position if after_it else muc_archive.c.id < position)
        backwards = before is not None or last_page
        order = muc_archive.c.id.desc() if backwards else muc_archive.c.id.asc()
        query = select(muc_archive).where(*conditions).order_by(order).limit(limit + 1)
        return await self._page(query, limit, backwards)

    @translated
    async def _page(self, query: Any, limit: int, backwards: bool) -> Page:
        async with self.db.engine.connect() as conn:
            rows = list((await conn.execute(query)).all())
        complete = len(rows) <= limit
        rows = rows[:limit]
        if backwards:
            rows.reverse()
        return Page([Entry(r.xml, r.stamp, r.stanza_id, r.sender) for r in rows], complete)
