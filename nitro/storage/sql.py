"""The SQL backend of the storage repositories: SQLAlchemy Core on SQLite (default) or MariaDB/MySQL.

Every write commits before its coroutine returns, so the server acknowledges only what SQL has.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import aiosqlite
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Row, delete, event, exc, func, insert, select, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from nitro.config import StorageSection
from nitro.storage.errors import (
    AlreadyExists,
    NoSuchAccount,
    QuotaExceeded,
    StorageError,
)
from nitro.storage.models import OfflineMessage, Roster, RosterItem, Subscription
from nitro.storage.protocols import Storage
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
from nitro.storage.sql_archive import SqlArchiveStore
from nitro.storage.sql_base import (
    DELETE_CHUNK,
    WRITE,
    Database,
    contact_keys,
    inserted_id,
    translate_errors,
    translated,
    username_key,
)
from nitro.storage.sql_mysql import (
    ensure_database,
    is_mysql,
    migration_engine,
    migration_lock,
    mysql_engine,
)
from nitro.storage.sql_pep import SqlPepStore
from nitro.storage.sql_userdata import (
    SqlBlockListStore,
    SqlLastActivityStore,
    SqlPrivateStore,
    SqlVCardStore,
)
from nitro.xmpp.sasl.credentials import HashName, ScramCredential

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
DEFAULT_POOL = StorageSection()  # MariaDB pool and timeouts when no config is given
_ITEMS_FOR_BATCH = 500  # usernames per IN (…) of `items_for`: far below any bound-parameter limit

_HASH_NAMES: dict[str, HashName] = {name: name for name in get_args(HashName)}
_SUBSCRIPTIONS: dict[str, Subscription] = {name: name for name in get_args(Subscription)}

# ---------------------------------------------------------------------------------------------------------
# Keys and rows.


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


def _item_row(item: RosterItem) -> dict[str, Any]:
    if item.subscription not in _SUBSCRIPTIONS:
        raise ValueError(f"unknown subscription state {item.subscription!r}")
    if not all(isinstance(group, str) for group in item.groups):
        raise TypeError("roster groups are strings")
    contact, contact_key = contact_keys(item.jid)
    return {
        "contact_key": contact_key,
        "contact": contact,
        "name": item.name,
        "subscription": item.subscription,
        "ask": item.ask,
        "pending_in": item.pending_in,
        "approved": item.approved,
        "groups": json.dumps(list(item.groups), ensure_ascii=False),
        "in_roster": item.in_roster,
        "request": item.request,
    }


def _item_from_row(row: Row[Any]) -> RosterItem:
    subscription = _SUBSCRIPTIONS.get(row.subscription)
    if subscription is None:
        raise StorageError(f"roster item with unknown subscription {row.subscription!r}")
    return RosterItem(
        jid=row.contact.decode(),
        name=row.name,
        subscription=subscription,
        ask=bool(row.ask),
        pending_in=bool(row.pending_in),
        approved=bool(row.approved),
        groups=tuple(json.loads(row.groups)),
        in_roster=bool(row.in_roster),
        request=None if row.request is None else bytes(row.request),
    )


# ---------------------------------------------------------------------------------------------------------
# Repositories.


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
        async with self._db.engine.connect() as conn:
            account_id = await self._db.account_id(conn, username)
            if account_id is None:
                return None
            result = await conn.execute(
                select(scram_credentials).where(scram_credentials.c.account_id == account_id)
            )
            credentials: dict[HashName, ScramCredential] = {}
            for row in result:
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
        async with self._db.engine.connect() as conn:
            return await self._db.account_id(conn, username) is not None

    @translated
    async def list_usernames(self, *, limit: int | None = None, after: str | None = None) -> list[str]:
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        query = select(accounts.c.username).order_by(accounts.c.username)
        if after is not None:
            query = query.where(accounts.c.username > after.encode())
        if limit is not None:
            query = query.limit(limit)
        async with self._db.engine.connect() as conn:
            return [name.decode() for name in (await conn.execute(query)).scalars()]

    @translated
    async def count(self) -> int:
        async with self._db.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(accounts))).scalar_one())


class SqlRosterStore:
    """RosterStore on SQL; the version is bumped in the transaction that changes the roster."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @translated
    async def get(self, username: str) -> Roster:
        async with self._db.engine.connect() as conn:  # one transaction: items and version agree
            account_id = await self._db.account_id(conn, username)
            if account_id is None:
                return Roster(version=0, items=())
            version = await self._version(conn, account_id)
            result = await conn.execute(
                select(roster_items)
                .where(roster_items.c.account_id == account_id)
                .order_by(roster_items.c.contact)
            )
            return Roster(version=version, items=tuple(_item_from_row(row) for row in result))

    @translated
    async def get_item(self, username: str, contact: str) -> RosterItem | None:
        _, contact_key = contact_keys(contact)
        async with self._db.engine.connect() as conn:
            account_id = await self._db.account_id(conn, username)
            if account_id is None:
                return None
            row = (
                await conn.execute(
                    select(roster_items).where(
                        roster_items.c.account_id == account_id, roster_items.c.contact_key == contact_key
                    )
                )
            ).one_or_none()
            return None if row is None else _item_from_row(row)

    @translated
    async def items_for(self, usernames: Sequence[str], contact: str) -> dict[str, RosterItem]:
        _, contact_key = contact_keys(contact)
        found: dict[str, RosterItem] = {}
        async with self._db.engine.connect() as conn:
            for offset in range(0, len(usernames), _ITEMS_FOR_BATCH):
                keys = [username_key(name) for name in usernames[offset : offset + _ITEMS_FOR_BATCH]]
                query = (
                    select(accounts.c.username, roster_items)
                    .join(accounts, accounts.c.id == roster_items.c.account_id)
                    .where(accounts.c.username.in_(keys), roster_items.c.contact_key == contact_key)
                )
                for row in await conn.execute(query):
                    found[bytes(row.username).decode()] = _item_from_row(row)
        return found

    @translated
    async def put(self, username: str, item: RosterItem, *, max_items: int | None = None) -> int:
        values = _item_row(item)
        async with self._db.writer.begin() as conn:
            account_id = await self._db.account_id(conn, username, lock=True)
            if account_id is None:
                raise NoSuchAccount(username)
            replaced = await conn.execute(
                delete(roster_items).where(
                    roster_items.c.account_id == account_id,
                    roster_items.c.contact_key == values["contact_key"],
                )
            )
            if replaced.rowcount == 0 and max_items is not None:
                count = select(func.count()).where(roster_items.c.account_id == account_id)
                held = int((await conn.execute(count)).scalar_one())
                if held >= max_items:
                    raise QuotaExceeded(f"{held} roster items, at most {max_items}")
            await conn.execute(insert(roster_items).values(account_id=account_id, **values))
            return await self._bump(conn, account_id)

    @translated
    async def remove(self, username: str, contact: str) -> int | None:
        _, contact_key = contact_keys(contact)
        async with self._db.writer.begin() as conn:
            account_id = await self._db.account_id(conn, username, lock=True)
            if account_id is None:
                return None
            result = await conn.execute(
                delete(roster_items).where(
                    roster_items.c.account_id == account_id, roster_items.c.contact_key == contact_key
                )
            )
            if result.rowcount == 0:
                return None
            return await self._bump(conn, account_id)

    @translated
    async def version(self, username: str) -> int:
        async with self._db.engine.connect() as conn:
            account_id = await self._db.account_id(conn, username)
            return 0 if account_id is None else await self._version(conn, account_id)

    @staticmethod
    async def _version(conn: AsyncConnection, account_id: int) -> int:
        version: int | None = (
            await conn.execute(
                select(roster_versions.c.version).where(roster_versions.c.account_id == account_id)
            )
        ).scalar_one_or_none()
        return version or 0

    @staticmethod
    async def _bump(conn: AsyncConnection, account_id: int) -> int:
        """XEP-0237 §2: every change gets a new, greater version."""
        result = await conn.execute(
            update(roster_versions)
            .where(roster_versions.c.account_id == account_id)
            .values(version=roster_versions.c.version + 1)
        )
        if result.rowcount == 0:  # an account created without its counter row
            await conn.execute(insert(roster_versions).values(account_id=account_id, version=1))
            return 1
        return await SqlRosterStore._version(conn, account_id)


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
        query = (
            select(offline_messages.c.id, offline_messages.c.stanza, offline_messages.c.stored_at)
            .join_from(offline_messages, accounts)
            .where(accounts.c.username == username_key(username))
            .order_by(offline_messages.c.id)
        )
        async with self._db.engine.connect() as conn:
            return [
                OfflineMessage(id=row.id, stanza=row.stanza, stored_at=row.stored_at)
                for row in await conn.execute(query)
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
        async with self._db.engine.connect() as conn:
            account_id = await self._db.account_id(conn, username)
            return 0 if account_id is None else await self._count(conn, account_id)

    @staticmethod
    async def _count(conn: AsyncConnection, account_id: int) -> int:
        query = select(func.count()).select_from(offline_messages)
        return int(
            (await conn.execute(query.where(offline_messages.c.account_id == account_id))).scalar_one()
        )


# ---------------------------------------------------------------------------------------------------------
# Opening: engine, SQLite connection setup, migrations.


def alembic_config() -> Config:
    """Alembic configured from code (no alembic.ini); `attributes["connection"]` is set by the caller."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    return config


def _upgrade(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "heads")  # each feature's migration may branch from 0001; all heads apply


async def upgrade_schema(engine: AsyncEngine) -> None:
    """Migrate the database to the newest schema (in one transaction where DDL is transactional).

    MariaDB/MySQL commit every DDL statement on their own, so there the migrations run under a
    server-wide lock instead: nodes started together take turns, and the later ones find nothing to do.
    """
    with translate_errors():
        if is_mysql(engine.url):
            migrator = migration_engine(engine.url)
            try:
                async with migrator.connect() as conn, migration_lock(conn):
                    await conn.run_sync(_upgrade)
                    await conn.commit()
            finally:
                await migrator.dispose()
            return
        async with engine.execution_options(**{WRITE: True}).begin() as conn:
            await conn.run_sync(_upgrade)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Nitro emits BEGIN itself (_sqlite_on_begin): sqlite3's legacy transaction control would not
    # begin a transaction for SELECT or DDL, breaking read consistency and transactional migrations.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        # Readers and the writer do not block each other. synchronous stays FULL, not NORMAL: in WAL
        # mode NORMAL may lose the last commits on power loss, and a commit acknowledges a write.
        cursor.execute("PRAGMA journal_mode=WAL")
        (mode,) = cursor.fetchone()
        if mode != "wal":
            log.info("SQLite journal mode is %s, not wal", mode)
        cursor.execute("PRAGMA synchronous=FULL")
    except BaseException:
        # The pool never sees this connection: close it here, or aiosqlite's worker thread outlives the
        # event loop (e.g. a file that is not a database fails at the first PRAGMA).
        cursor.close()
        dbapi_connection.close()
        raise
    cursor.close()


async def _aiosqlite_connected(connection: aiosqlite.Connection) -> aiosqlite.Connection:
    try:
        return await connection
    except BaseException:
        # aiosqlite stops its worker thread after a failed connect (e.g. a missing directory) without
        # waiting; a thread that outlives the event loop then fails calling back into it. Wait here.
        await asyncio.to_thread(connection._thread.join, 5.0)
        raise


def _aiosqlite_connect(*args: Any, **kwargs: Any) -> Awaitable[aiosqlite.Connection]:
    connection = aiosqlite.connect(*args, **kwargs)
    connection._thread.daemon = True  # as SQLAlchemy's own aiosqlite connect does
    return _aiosqlite_connected(connection)


def _sqlite_do_connect(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
    cparams["async_creator_fn"] = _aiosqlite_connect  # SQLAlchemy's aiosqlite adapter then calls it


def _sqlite_on_begin(conn: Connection) -> None:
    # A writing transaction takes the write lock up front, waiting up to the busy timeout; a deferred
    # one that reads first would fail at once with SQLITE_BUSY when another connection wrote meanwhile.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")


def _sqlite_path(url: URL) -> Path | None:
    """The database file of a SQLite URL, None for in-memory and `file:` URI databases."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def create_engine(dsn: str, *, create_dirs: bool = True, pool: StorageSection = DEFAULT_POOL) -> AsyncEngine:
    """An engine for `dsn`, set up as Nitro needs it (SQLite: WAL, foreign keys, explicit BEGIN;
    MariaDB/MySQL: see sql_mysql.py, with the pool and timeouts of `pool`)."""
    url = make_url(dsn)
    if is_mysql(url):
        return mysql_engine(url, pool)
    sqlite = url.get_backend_name() == "sqlite"
    if sqlite and create_dirs and (path := _sqlite_path(url)) is not None:
        with translate_errors():
            path.parent.mkdir(parents=True, exist_ok=True)
    # hide_parameters: error messages must not quote SCRAM keys or message bodies.
    engine = create_async_engine(url, hide_parameters=True, pool_pre_ping=not sqlite)
    if sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        event.listen(engine.sync_engine, "do_connect", _sqlite_do_connect)
    return engine


@asynccontextmanager
async def open_sql_storage(
    dsn: str, *, create_dirs: bool = True, pool: StorageSection = DEFAULT_POOL
) -> AsyncIterator[Storage]:
    """The repositories on the database at `dsn`, migrated to the newest schema; disposed on exit.

    Raises StorageUnavailable when the database cannot be opened (unreachable, locked, not a database).
    SQLite's busy timeout is the `timeout` query parameter in seconds (default 5). A missing MariaDB
    database is created (with `create_dirs`, as a missing SQLite directory is).
    """
    engine = create_engine(dsn, create_dirs=create_dirs, pool=pool)
    try:
        if create_dirs and is_mysql(engine.url):
            await ensure_database(engine.url, pool)
        await upgrade_schema(engine)
        log.info("SQL storage ready at %s", engine.url.render_as_string(hide_password=True))
        db = Database(engine)
        yield Storage(
            accounts=SqlAccountStore(db),
            rosters=SqlRosterStore(db),
            offline=SqlOfflineStore(db),
            archive=SqlArchiveStore(db),
            pep=SqlPepStore(db),
            blocklist=SqlBlockListStore(db),
            vcards=SqlVCardStore(db),
            private=SqlPrivateStore(db),
            last=SqlLastActivityStore(db),
        )
    finally:
        await engine.dispose()
