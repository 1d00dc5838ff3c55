"""Small per-user data on SQL: block lists (XEP-0191), vCards (XEP-0054), private XML (XEP-0049), last
activity (XEP-0012)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Insert, bindparam, delete, func, insert, select
from sqlalchemy.dialects import mysql, sqlite

from nitro.storage.errors import NoSuchAccount, QuotaExceeded
from nitro.storage.models import LastActivity
from nitro.storage.schema import (
    PRIVATE_KEY_MAX_BYTES,
    accounts,
    blocked_jids,
    last_activity,
    private_xml,
    vcards,
)
from nitro.storage.sql_base import DELETE_CHUNK, Database, contact_keys, hashed_key, translated, username_key
from nitro.storage.sqlite_select import loop_compiled

_BLOCKED = loop_compiled(  # built once (see sql_base._ACCOUNT_ID): read at every login
    select(blocked_jids.c.jid)
    .join_from(blocked_jids, accounts)
    .where(accounts.c.username == bindparam("username"))
    .order_by(blocked_jids.c.jid)  # UTF-8 bytes: code point order on every backend
)

_VCARD = (  # built once, as the reads below: a statement's construction costs more than SQLite's answer
    select(vcards.c.vcard).join_from(vcards, accounts).where(accounts.c.username == bindparam("username"))
)
_PRIVATE = (
    select(private_xml.c.payload)
    .join_from(private_xml, accounts)
    .where(accounts.c.username == bindparam("username"), private_xml.c.key_hash == bindparam("key_hash"))
)

_VCARD_DELETE = delete(vcards).where(vcards.c.account_id == bindparam("account_id"))
_VCARD_INSERT = insert(vcards)
_PRIVATE_DELETE = delete(private_xml).where(
    private_xml.c.account_id == bindparam("account_id"), private_xml.c.key_hash == bindparam("key_hash")
)
_PRIVATE_COUNT = select(func.count()).where(private_xml.c.account_id == bindparam("account_id"))
_PRIVATE_INSERT = insert(private_xml)


class SqlBlockListStore:
    """BlockListStore on SQL; a JID is kept once however often it is blocked."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @translated
    async def list(self, username: str) -> list[str]:
        rows = await self._db.rows(_BLOCKED, {"username": username_key(username)})
        return [row.jid.decode() for row in rows]

    @translated
    async def add(self, username: str, jids: Sequence[str]) -> None:
        wanted = {key: raw for raw, key in map(contact_keys, jids)}
        async with self._db.writer.begin() as conn:
            account_id = await self._db.existing_account_id(conn, username)
            if not wanted:
                return
            keys = sorted(wanted)
            for start in range(0, len(keys), DELETE_CHUNK):
                present = await conn.execute(
                    select(blocked_jids.c.jid_key).where(
                        blocked_jids.c.account_id == account_id,
                        blocked_jids.c.jid_key.in_(keys[start : start + DELETE_CHUNK]),
                    )
                )
                for key in present.scalars():
                    del wanted[key]
            if wanted:
                await conn.execute(
                    insert(blocked_jids),
                    [{"account_id": account_id, "jid_key": key, "jid": raw} for key, raw in wanted.items()],
                )

    @translated
    async def remove(self, username: str, jids: Sequence[str]) -> None:
        keys = sorted({key for _, key in map(contact_keys, jids)})
        if not keys:
            return
        async with self._db.writer.begin() as conn:
            account_id = await self._db.account_id(conn, username, lock=True)
            if account_id is None:
                return
            for start in range(0, len(keys), DELETE_CHUNK):
                await conn.execute(
                    delete(blocked_jids).where(
                        blocked_jids.c.account_id == account_id,
                        blocked_jids.c.jid_key.in_(keys[start : start + DELETE_CHUNK]),
                    )
                )

    @translated
    async def clear(self, username: str) -> None:
        async with self._db.writer.begin() as conn:
            account_id = await self._db.account_id(conn, username, lock=True)
            if account_id is not None:
                await conn.execute(delete(blocked_jids).where(blocked_jids.c.account_id == account_id))


class SqlVCardStore:
    """VCardStore on SQL: one serialized vCard per account."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @translated
    async def get(self, username: str) -> bytes | None:
        row = await self._db.one_or_none(_VCARD, {"username": username_key(username)})
        vcard: bytes | None = None if row is None else row.vcard
        return vcard

    @translated
    async def set(self, username: str, vcard: bytes | None) -> None:
        async with self._db.writer.begin() as conn:
            if vcard is None:
                account_id = await self._db.account_id(conn, username, lock=True)
            else:
                account_id = await self._db.existing_account_id(conn, username)
            if account_id is None:
                return
            await conn.execute(_VCARD_DELETE, {"account_id": account_id})
            if vcard is not None:
                await conn.execute(_VCARD_INSERT, {"account_id": account_id, "vcard": vcard})


class SqlPrivateStore:
    """PrivateStore on SQL (XEP-0049): one element per account and Clark name."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @translated
    async def get(self, username: str, key: str) -> bytes | None:
        _, key_hash = self._key(key)
        row = await self._db.one_or_none(_PRIVATE, {"username": username_key(username), "key_hash": key_hash})
        payload: bytes | None = None if row is None else row.payload
        return payload

    @translated
    async def set(self, username: str, key: str, payload: bytes, *, max_keys: int | None = None) -> None:
        raw, key_hash = self._key(key)
        async with self._db.writer.begin() as conn:
            account_id = await self._db.existing_account_id(conn, username)
            replaced = await conn.execute(_PRIVATE_DELETE, {"account_id": account_id, "key_hash": key_hash})
            if replaced.rowcount == 0 and max_keys is not None:
                held = int((await conn.execute(_PRIVATE_COUNT, {"account_id": account_id})).scalar_one())
                if held >= max_keys:
                    raise QuotaExceeded(f"{held} private XML elements, at most {max_keys}")
            await conn.execute(
                _PRIVATE_INSERT,
                {"account_id": account_id, "key_hash": key_hash, "key": raw, "payload": payload},
            )

    @staticmethod
    def _key(key: str) -> tuple[bytes, bytes]:
        return hashed_key(key, max_bytes=PRIVATE_KEY_MAX_BYTES, what="private XML key")


def _last_activity_source() -> Any:
    """The row a logout writes: the account's id (none for no account) with the bound time and status."""
    return select(
        accounts.c.id,
        bindparam("seen_at", type_=last_activity.c.seen_at.type),
        bindparam("status", type_=last_activity.c.status.type),
    ).where(accounts.c.username == bindparam("username"))


def _last_activity_upserts() -> dict[str, Insert]:
    """Built once per dialect (see sql_base._ACCOUNT_ID): the logout's write is one statement, an insert of
    the account's row that replaces the one already there (SQLite ≥ 3.24 `ON CONFLICT … DO UPDATE`,
    MariaDB/MySQL `ON DUPLICATE KEY UPDATE`), instead of a lookup, a delete and an insert."""
    columns = ["account_id", "seen_at", "status"]
    on_sqlite = sqlite.insert(last_activity).from_select(columns, _last_activity_source())
    on_sqlite = on_sqlite.on_conflict_do_update(
        index_elements=[last_activity.c.account_id],
        set_={"seen_at": on_sqlite.excluded.seen_at, "status": on_sqlite.excluded.status},
    )
    on_mysql = mysql.insert(last_activity).from_select(columns, _last_activity_source())
    on_mysql = on_mysql.on_duplicate_key_update(
        seen_at=on_mysql.inserted.seen_at, status=on_mysql.inserted.status
    )
    return {"sqlite": on_sqlite, "mysql": on_mysql, "mariadb": on_mysql}


_LAST_ACTIVITY_UPSERTS = _last_activity_upserts()
_ACCOUNTS_NAMED = select(accounts.c.username).where(
    accounts.c.username.in_(bindparam("names", expanding=True))
)
_LAST_ACTIVITY = (
    select(last_activity.c.seen_at, last_activity.c.status)
    .join_from(last_activity, accounts)
    .where(accounts.c.username == bindparam("username"))
)


class SqlLastActivityStore:
    """LastActivityStore on SQL: one row per account, replaced at each logout."""

    def __init__(self, db: Database) -> None:
        self._db = db
        dialect = db.engine.dialect.name
        if dialect not in _LAST_ACTIVITY_UPSERTS:
            raise ValueError(f"no last-activity upsert for the {dialect} dialect")
        self._upsert = _LAST_ACTIVITY_UPSERTS[dialect]

    @translated
    async def get(self, username: str) -> LastActivity | None:
        row = await self._db.one_or_none(_LAST_ACTIVITY, {"username": username_key(username)})
        return None if row is None else LastActivity(seen_at=row.seen_at, status=row.status)

    @translated
    async def set(self, username: str, activity: LastActivity) -> None:
        parameters = last_activity_values(username, activity)
        written = await self._db.write_one(self._upsert, parameters)  # on SQLite: one trip to its thread
        # No row from the SELECT: no such account. (MariaDB counts a row updated to the values it had only
        # with the FOUND_ROWS flag, which SQLAlchemy sets: look rather than rely on it.)
        if written == 0 and await self._db.read(lambda conn: self._db.account_id(conn, username)) is None:
            raise NoSuchAccount(username)

    @translated
    async def set_many(self, activities: Sequence[tuple[str, LastActivity]]) -> frozenset[str]:
        """Each user's activity (one per user) in one transaction; returns the usernames that have no account
        (nothing written for them)."""
        rows = [last_activity_values(username, activity) for username, activity in activities]
        written = await self._db.write_many(self._upsert, rows)
        # One row written per account on SQLite (an insert or an update): when all were, none is missing.
        # MariaDB counts an updated row twice (and one left as it was once): look whenever it may be.
        if written == len(rows) and self._db.engine.dialect.name == "sqlite":
            return frozenset()
        names = [row["username"] for row in rows]
        found: set[bytes] = set()
        for first in range(0, len(names), DELETE_CHUNK):
            chunk = names[first : first + DELETE_CHUNK]
            found.update(
                bytes(row.username) for row in await self._db.rows(_ACCOUNTS_NAMED, {"names": chunk})
            )
        return frozenset(username for username, _ in activities if username_key(username) not in found)


def last_activity_values(username: str, activity: LastActivity) -> dict[str, Any]:
    """The upsert's values for one user (raises ValueError for a bad username or a time without a zone)."""
    if activity.seen_at.tzinfo is None:
        raise ValueError("last activity needs a timezone-aware time")
    return {"username": username_key(username), "seen_at": activity.seen_at, "status": activity.status}
