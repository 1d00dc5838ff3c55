"""AccountStore on SQL: accounts and their SCRAM credentials (RFC 5802); deleting an account deletes
everything it owns.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, get_args

from sqlalchemy import bindparam, delete, exc, func, insert, select

from nitro.storage.errors import AlreadyExists, StorageError
from nitro.storage.schema import (
    accounts,
    archive_messages,
    archive_prefs,
    blocked_jids,
    last_activity,
    offline_messages,
    pep_items,
    pep_nodes,
    private_xml,
    roster_items,
    roster_versions,
    scram_credentials,
    vcards,
)
from nitro.storage.sql_base import Database, inserted_id, translated, username_key
from nitro.storage.sqlite_select import loop_compiled
from nitro.xmpp.sasl.credentials import HashName, ScramCredential

log = logging.getLogger(__name__)

_HASH_NAMES: dict[str, HashName] = {name: name for name in get_args(HashName)}
_CREDENTIALS = loop_compiled(  # built once (see sql_base._ACCOUNT_ID)
    select(accounts.c.id, scram_credentials)
    .select_from(accounts)
    .outerjoin(scram_credentials, scram_credentials.c.account_id == accounts.c.id)
    .where(accounts.c.username == bindparam("username"))
)


def _credential_rows(credentials: Mapping[HashName, ScramCredential]) -> list[dict[str, Any]]:
    rows = []
    for hash_name, credential in credentials.items():
        if hash_name != credential.hash_name or hash_name not in _HASH_NAMES:
            raise ValueError(f"credential for {credential.hash_name!r} filed under {hash_name!r}")
        rows.append(
            {
                "hash_name": hash_name,
                "salt": credential.salt,
                "iterations": credential.iterations,
                "stored_key": credential.stored_key,
                "server_key": credential.server_key,
            }
        )
    return rows


class SqlAccountStore:
    """AccountStore on SQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @translated
    async def create(self, username: str, credentials: Mapping[HashName, ScramCredential]) -> None:
        name = username_key(username)
        rows = _credential_rows(credentials)
        async with self._db.writer.begin() as conn:
            if await self._db.account_id(conn, username) is not None:
                raise AlreadyExists(username)
            try:
                result = await conn.execute(insert(accounts).values(username=name))
            except exc.IntegrityError as error:  # created concurrently by another node (MariaDB)
                raise AlreadyExists(username) from error
            account_id = inserted_id(result)
            if rows:
                await conn.execute(insert(scram_credentials), [{"account_id": account_id, **r} for r in rows])
            await conn.execute(insert(roster_versions).values(account_id=account_id, version=0))

    @translated
    async def get_credentials(self, username: str) -> dict[HashName, ScramCredential] | None:
        # One statement (a login's first read): no row means no account, one row without a hash none.
        rows = await self._db.rows(_CREDENTIALS, {"username": username_key(username)})
        if not rows:
            return None
        credentials: dict[HashName, ScramCredential] = {}
        for row in rows:
            if row.hash_name is None:
                continue
            hash_name = _HASH_NAMES.get(row.hash_name)
            if hash_name is None:  # written by a newer Nitro; this one cannot use it
                log.warning("ignoring SCRAM credential with unknown hash %r", row.hash_name)
                continue
            try:
                credentials[hash_name] = ScramCredential(
                    hash_name=hash_name,
                    salt=row.salt,
                    iterations=row.iterations,
                    stored_key=row.stored_key,
                    server_key=row.server_key,
                )
            except ValueError as error:
                raise StorageError(f"corrupt {row.hash_name} credential: {error}") from error
        return credentials

    @translated
    async def set_credentials(self, username: str, credentials: Mapping[HashName, ScramCredential]) -> bool:
        rows = _credential_rows(credentials)
        async with self._db.writer.begin() as conn:
            account_id = await self._db.account_id(conn, username, lock=True)
            if account_id is None:
                return False
            await conn.execute(delete(scram_credentials).where(scram_credentials.c.account_id == account_id))
            if rows:
                await conn.execute(insert(scram_credentials), [{"account_id": account_id, **r} for r in rows])
            return True

    @translated
    async def delete(self, username: str) -> bool:
        async with self._db.writer.begin() as conn:
            account_id = await self._db.account_id(conn, username, lock=True)
            if account_id is None:
                return False
            # Explicit, children first: correct even where foreign keys are not enforced.
            nodes = select(pep_nodes.c.id).where(pep_nodes.c.account_id == account_id)
            await conn.execute(delete(pep_items).where(pep_items.c.node_id.in_(nodes)))
            for table in (
                pep_nodes,
                archive_messages,
                archive_prefs,
                blocked_jids,
                vcards,
                private_xml,
                last_activity,
                offline_messages,
                roster_items,
                roster_versions,
                scram_credentials,
            ):
                await conn.execute(delete(table).where(table.c.account_id == account_id))
            await conn.execute(delete(accounts).where(accounts.c.id == account_id))
            return True

    @translated
    async def exists(self, username: str) -> bool:
        return await self._db.read(lambda conn: self._db.account_id(conn, username)) is not None

    @translated
    async def list_usernames(self, *, limit: int | None = None, after: str | None = None) -> list[str]:
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        query = select(accounts.c.username).order_by(accounts.c.username)
        if after is not None:
            query = query.where(accounts.c.username > after.encode())
        if limit is not None:
            query = query.limit(limit)
        names = await self._db.rows(query)
        return [row.username.decode() for row in names]

    @translated
    async def count(self) -> int:
        query = select(func.count()).select_from(accounts)
        return int((await self._db.rows(query))[0][0])
