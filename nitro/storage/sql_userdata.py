"""Small per-user data on SQL: block lists (XEP-0191), vCards (XEP-0054), private XML (XEP-0049), last
activity (XEP-0012)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, delete, func, insert, select

from nitro.storage.errors import QuotaExceeded
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

_BLOCKED = (  # built once (see sql_base._ACCOUNT_ID): read at every login
    select(blocked_jids.c.jid)
    .join_from(blocked_jids, accounts)
    .where(accounts.c.username == bindparam("username"))
    .order_by(blocked_jids.c.jid)  # UTF-8 bytes: code point order on every backend
)


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
        query = (
            select(vcards.c.vcard)
            .join_from(vcards, accounts)
            .where(accounts.c.username == username_key(username))
        )
        row = await self._db.one_or_none(query)
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
            await conn.execute(delete(vcards).where(vcards.c.account_id == account_id))
            if vcard is not None:
                await conn.execute(insert(vcards).values(account_id=account_id, vcard=vcard))


class SqlPrivateStore:
    """PrivateStore on SQL (XEP-0049): one element per account and Clark name."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @translated
    async def get(self, username: str, key: str) -> bytes | None:
        _, key_hash = self._key(key)
        query = (
            select(private_xml.c.payload)
            .join_from(private_xml, accounts)
            .where(accounts.c.username == username_key(username), private_xml.c.key_hash == key_hash)
        )
        row = await self._db.one_or_none(query)
        payload: bytes | None = None if row is None else row.payload
        return payload

    @translated
    async def set(self, username: str, key: str, payload: bytes, *, max_keys: int | None = None) -> None:
        raw, key_hash = self._key(key)
        async with self._db.writer.begin() as conn:
            account_id = await self._db.existing_account_id(conn, username)
            replaced = await conn.execute(
                delete(private_xml).where(
                    private_xml.c.account_id == account_id, private_xml.c.key_hash == key_hash
                )
            )
            if replaced.rowcount == 0 and max_keys is not None:
                count = select(func.count()).where(private_xml.c.account_id == account_id)
                held = int((await conn.execute(count)).scalar_one())
                if held >= max_keys:
                    raise QuotaExceeded(f"{held} private XML elements, at most {max_keys}")
            await conn.execute(
                insert(private_xml).values(account_id=account_id, key_hash=key_hash, key=raw, payload=payload)
            )

    @staticmethod
    def _key(key: str) -> tuple[bytes, bytes]:
        return hashed_key(key, max_bytes=PRIVATE_KEY_MAX_BYTES, what="private XML key")


class SqlLastActivityStore:
    """LastActivityStore on SQL: one row per account, replaced at each logout."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @translated
    async def get(self, username: str) -> LastActivity | None:
        query = (
            select(last_activity.c.seen_at, last_activity.c.status)
            .join_from(last_activity, accounts)
            .where(accounts.c.username == username_key(username))
        )
        row = await self._db.one_or_none(query)
        return None if row is None else LastActivity(seen_at=row.seen_at, status=row.status)

    @translated
    async def set(self, username: str, activity: LastActivity) -> None:
        async with self._db.writer.begin() as conn:
            account_id = await self._db.existing_account_id(conn, username)
            await conn.execute(delete(last_activity).where(last_activity.c.account_id == account_id))
            await conn.execute(
                insert(last_activity).values(
                    account_id=account_id, seen_at=activity.seen_at, status=activity.status
                )
            )
