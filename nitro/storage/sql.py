"""The SQL backend: the engine (SQLite by default, or MariaDB/MySQL), its connection setup, migrations, and
`open_sql_storage`, which yields the repositories of the sql_*.py files on a migrated database.

Every write commits before its coroutine returns, so the server acknowledges only what SQL has. On a SQLite
file, reads run on the event loop (sqlite_read.py) and writes on a writing connection of their own.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import PoolResetState
from sqlalchemy.util import await_

from nitro.config import StorageSection
from nitro.storage.protocols import Storage
from nitro.storage.sql_accounts import SqlAccountStore
from nitro.storage.sql_archive import SqlArchiveStore
from nitro.storage.sql_base import WRITE, Database, translate_errors
from nitro.storage.sql_mysql import (
    ensure_database,
    is_mysql,
    migration_engine,
    migration_lock,
    mysql_engine,
)
from nitro.storage.sql_offline import SqlOfflineStore
from nitro.storage.sql_pep import SqlPepStore
from nitro.storage.sql_roster import SqlRosterStore
from nitro.storage.sql_userdata import (
    SqlBlockListStore,
    SqlLastActivityStore,
    SqlPrivateStore,
    SqlVCardStore,
)
from nitro.storage.sqlite_read import LoopReader

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
DEFAULT_POOL = StorageSection()  # MariaDB pool and timeouts when no config is given


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


# The writing connection's own settings; neither changes what a commit makes durable (each is still fsynced,
# synchronous=FULL). A batch of archive rows dirties about one page per row in each per-account index:
# SQLite's default cache (2 MiB) spills such a batch to the WAL before its commit and then reads back the
# pages it evicted. A checkpoint copies the WAL's pages into the database file: every 1,000 pages (the
# default) that is nearly every page of the last two or three batches; every 10,000, the pages written
# again and again (the end of each account's index ranges) are copied once. The WAL file grows to about
# 40 MiB (10,000 pages of 4 KiB) and stays that size; readers and other processes keep the defaults.
WRITER_CACHE_KIB = 16 * 1024  # holds the ~3,300 pages a batch of 1,000 rows dirties
WRITER_CHECKPOINT_PAGES = 10_000
_WRITER_PRAGMAS = (f"cache_size=-{WRITER_CACHE_KIB}", f"wal_autocheckpoint={WRITER_CHECKPOINT_PAGES}")


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    _sqlite_set_up(dbapi_connection, ())


def _sqlite_writer_on_connect(dbapi_connection: Any, _record: Any) -> None:
    _sqlite_set_up(dbapi_connection, _WRITER_PRAGMAS)


def _sqlite_set_up(dbapi_connection: Any, pragmas: tuple[str, ...]) -> None:
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
        for pragma in pragmas:
            cursor.execute(f"PRAGMA {pragma}")
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
    # Sent through aiosqlite directly: one hop to its thread, where a statement through SQLAlchemy makes
    # three (cursor, execute, close), as much as the transaction's own statement.
    begin = "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN"
    driver = conn.connection.driver_connection
    assert isinstance(driver, aiosqlite.Connection), "SQLite engines are aiosqlite's"
    try:
        await_(driver.execute(begin))
    except sqlite3.Error as error:  # as SQLAlchemy wraps the driver's errors (OperationalError: busy, …)
        raise exc.DBAPIError.instance(begin, None, error, sqlite3.Error, hide_parameters=True) from error


def _sqlite_reset(dbapi_connection: Any, _record: Any, state: PoolResetState) -> None:
    # Instead of the pool's rollback on return (pool_reset_on_return=None): only when a transaction is
    # still open, which after a commit (every write) it is not; sqlite3 knows that without a hop.
    if state.asyncio_safe and dbapi_connection.driver_connection.in_transaction:
        dbapi_connection.rollback()


def sqlite_path(url: URL) -> Path | None:
    """The database file of a SQLite URL, None for in-memory and `file:` URI databases."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


# Connections a SQLite engine keeps open. No overflow: an overflow connection is closed when returned, and
# opening one costs a thread and three PRAGMAs; readers beyond these wait for one (SQLite answers fast).
SQLITE_READERS = 5


def create_engine(
    dsn: str,
    *,
    create_dirs: bool = True,
    pool: StorageSection = DEFAULT_POOL,
    connections: int | None = None,
    writer: bool = False,
) -> AsyncEngine:
    """An engine for `dsn`, set up as Nitro needs it (SQLite: WAL, foreign keys, explicit BEGIN, a pool of
    `connections` or SQLITE_READERS for a file, `writer`: the writing connection's cache and checkpoints;
    MariaDB/MySQL: see sql_mysql.py, with the pool and timeouts of `pool`)."""
    url = make_url(dsn)
    if is_mysql(url):
        return mysql_engine(url, pool)
    sqlite = url.get_backend_name() == "sqlite"
    if sqlite and create_dirs and (path := sqlite_path(url)) is not None:
        with translate_errors():
            path.parent.mkdir(parents=True, exist_ok=True)
    # hide_parameters: error messages must not quote SCRAM keys or message bodies.
    options: dict[str, Any] = {}
    if sqlite and sqlite_path(url) is not None:
        options = {"pool_size": connections or SQLITE_READERS, "max_overflow": 0}
    if sqlite:
        options["pool_reset_on_return"] = None  # _sqlite_reset instead
    engine = create_async_engine(url, hide_parameters=True, pool_pre_ping=not sqlite, **options)
    if sqlite:
        event.listen(
            engine.sync_engine, "connect", _sqlite_writer_on_connect if writer else _sqlite_on_connect
        )
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        event.listen(engine.sync_engine, "reset", _sqlite_reset)
        event.listen(engine.sync_engine, "do_connect", _sqlite_do_connect)
    return engine


@asynccontextmanager
async def open_database(
    dsn: str, *, create_dirs: bool = True, pool: StorageSection = DEFAULT_POOL
) -> AsyncIterator[Database]:
    """The database at `dsn`, migrated to the newest schema; its engines disposed on exit.

    Raises StorageUnavailable when the database cannot be opened (unreachable, locked, not a database).
    SQLite's busy timeout is the `timeout` query parameter in seconds (default 5). A missing MariaDB
    database is created (with `create_dirs`, as a missing SQLite directory is). A SQLite file gets a
    second engine of one connection for every write, and a synchronous connection for reads on the event
    loop (see `Database`).
    """
    engine = create_engine(dsn, create_dirs=create_dirs, pool=pool)
    write_engine: AsyncEngine | None = None
    loop_reader: LoopReader | None = None
    try:
        if create_dirs and is_mysql(engine.url):
            await ensure_database(engine.url, pool)
        await upgrade_schema(engine)
        if engine.dialect.name == "sqlite" and sqlite_path(engine.url) is not None:
            write_engine = create_engine(dsn, create_dirs=False, connections=1, writer=True)
            loop_reader = LoopReader(engine.url)
        log.info("SQL storage ready at %s", engine.url.render_as_string(hide_password=True))
        yield Database(engine, write_engine, loop_reader)
    finally:
        await engine.dispose()
        if write_engine is not None:
            await write_engine.dispose()
        if loop_reader is not None:
            loop_reader.dispose()


def sql_repositories(db: Database) -> Storage:
    """The repositories of the sql_*.py files on `db`."""
    return Storage(
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


@asynccontextmanager
async def open_sql_storage(
    dsn: str, *, create_dirs: bool = True, pool: StorageSection = DEFAULT_POOL
) -> AsyncIterator[Storage]:
    """The repositories on the database at `dsn` (see `open_database`); disposed on exit."""
    async with open_database(dsn, create_dirs=create_dirs, pool=pool) as db:
        yield sql_repositories(db)
