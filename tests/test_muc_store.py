"""The muc plugin's SQL tables on SQLite and MariaDB: rooms with their config and affiliations, the
archive with MAM paging, tables created when missing (twice is harmless)."""

from __future__ import annotations

from sqlalchemy import delete
from sqlbackends import SqlBackend

from nitro.storage.sql import create_engine
from plugins.muc.affiliation import Affiliation
from plugins.muc.history import Entry
from plugins.muc.roomconfig import RoomConfig
from plugins.muc.store import MucStore, metadata

ROOM = "desk@conference.localhost"


async def test_rooms_and_archive(sql_backend: SqlBackend) -> None:
    engine = create_engine(sql_backend.dsn)
    try:
        store = MucStore(engine)
        await store.create_tables()
        await store.create_tables()
        async with engine.begin() as conn:  # the session's MariaDB database is shared by the tests
            for table in metadata.sorted_tables:
                await conn.execute(delete(table))
        config = RoomConfig(name="Rates", persistent=True, members_only=True)
        owners = {"alice@localhost": Affiliation.OWNER, "bob@localhost": Affiliation.MEMBER}
        await store.save_room(ROOM, config, "Figures", f"{ROOM}/Alice", owners)
        await store.save_room(ROOM, config, "Later", f"{ROOM}/Alice", {"alice@localhost": Affiliation.OWNER})
        (room,) = await store.load_rooms()
        assert (room.jid, room.config, room.subject) == (ROOM, config, "Later")
        assert room.affiliations == {"alice@localhost": Affiliation.OWNER}

        for n in range(7):
            await store.archive(ROOM, Entry(f"<message>m{n}</message>", 1000.0 + n, f"id{n}", f"{ROOM}/A"))
        await store.archive("other@conference.localhost", Entry("<message/>", 1.0, "x", "o@c/A"))
        assert [e.stanza_id for e in await store.recent(ROOM, 3)] == ["id4", "id5", "id6"]
        page = await store.query(
            ROOM, start=None, end=None, after=None, before=None, last_page=False, limit=3
        )
        assert page is not None
        assert ([e.stanza_id for e in page.entries], page.complete) == (["id0", "id1", "id2"], False)
        page = await store.query(
            ROOM, start=None, end=None, after="id5", before=None, last_page=False, limit=3
        )
        assert page is not None
        assert ([e.stanza_id for e in page.entries], page.complete) == (["id6"], True)
        last = await store.query(ROOM, start=None, end=None, after=None, before=None, last_page=True, limit=2)
        assert last is not None
        assert [e.stanza_id for e in last.entries] == ["id5", "id6"]
        window = await store.query(
            ROOM, start=1002.0, end=1003.0, after=None, before=None, last_page=False, limit=9
        )
        assert window is not None
        assert [e.stanza_id for e in window.entries] == ["id2", "id3"]
        assert (
            await store.query(ROOM, start=None, end=None, after="x", before=None, last_page=False, limit=3)
            is None
        )

        await store.delete_room(ROOM)
        assert await store.load_rooms() == []
    finally:
        async with engine.begin() as conn:  # leave the shared MariaDB database with the core's schema only
            await conn.run_sync(metadata.drop_all)
        await engine.dispose()
