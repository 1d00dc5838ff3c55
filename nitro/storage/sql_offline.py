"""OfflineStore on SQL (XEP-0160 offline messages, RFC 6121 §8.5.2.2) under a per-account quota."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import bindparam, delete, func, insert, select

from nitro.storage.errors import NoSuchAccount, QuotaExceeded
from nitro.storage.models import OfflineMessage
from nitro.storage.schema import accounts, offline_messages
from nitro.storage.sql_base import DELETE_CHUNK, Database, inserted_id, translated, username_key
from nitro.storage.sqlite_read import Reader
from nitro.storage.sqlite_select import loop_compiled

_MESSAGES = loop_compiled(  # built once (see sql_base._ACCOUNT_ID): read at every login
    select(offline_messages.c.id, offline_messages.c.stanza, offline_messages.c.stored_at)
    .join_from(offline_messages, accounts)
    .where(accounts.c.username == bindparam("username"))
    .order_by(offline_messages.c.id)
)


class SqlOfflineStore:
    """OfflineStore on SQL (XEP-0160); ids increase and are never reused, so they order the messages."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @translated
    async def push(self, username: str, stanza: bytes, *, quota: int) -> int:
        async with self._db.writer.begin() as conn:
            # The account row lock (MariaDB) or the write lock (SQLite) makes check-and-insert atomic.
            account_id = await self._db.account_id(conn, username, lock=True)
            if account_id is None:
                raise NoSuchAccount(username)
            stored = await self._count(conn, account_id)
            if stored >= quota:
                raise QuotaExceeded(f"{stored} offline messages, quota {quota}")
            result = await conn.execute(
                insert(offline_messages).values(
                    account_id=account_id, stanza=stanza, stored_at=datetime.now(UTC)
                )
            )
            return inserted_id(result)

    @translated
    async def list(self, username: str) -> list[OfflineMessage]:
        return [
            OfflineMessage(id=row.id, stanza=row.stanza, stored_at=row.stored_at)
            for row in await self._db.rows(_MESSAGES, {"username": username_key(username)})
        ]

    @translated
    async def delete(self, username: str, ids: Sequence[int]) -> None:
        if not ids:
            return
        unique = sorted(set(ids))
        async with self._db.writer.begin() as conn:
            account_id = await self._db.account_id(conn, username)
            if account_id is None:
                return
            for start in range(0, len(unique), DELETE_CHUNK):
                await conn.execute(
                    delete(offline_messages).where(
                        offline_messages.c.account_id == account_id,
                        offline_messages.c.id.in_(unique[start : start + DELETE_CHUNK]),
                    )
                )

    @translated
    async def count(self, username: str) -> int:
        async def body(conn: Reader) -> int:
            account_id = await self._db.account_id(conn, username)
            return 0 if account_id is None else await self._count(conn, account_id)

        return await self._db.read(body)

    @staticmethod
    async def _count(conn: Reader, account_id: int) -> int:
        query = select(func.count()).select_from(offline_messages)
        return int(
            (await conn.execute(query.where(offline_messages.c.account_id == account_id))).scalar_one()
        )
