"""MariaDB/MySQL set-up for the SQL backend: the asyncmy engine (utf8mb4, strict mode, a pinged pool),
creating a missing database, and a server-wide lock so two nodes never run the migrations at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from nitro.config import StorageSection
from nitro.storage.sql_base import translate_errors

log = logging.getLogger(__name__)


class _NamedPrimaryKeyNote(logging.Filter):
    """asyncmy logs every server warning; MariaDB's note 1280 on each named PRIMARY KEY in the
    migrations ("Name 'pk_…' ignored for PRIMARY key") is expected and would only be noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "ignored for PRIMARY key" not in record.getMessage()


logging.getLogger("asyncmy").addFilter(_NamedPrimaryKeyNote())

MYSQL_BACKENDS = ("mysql", "mariadb")
CHARSET = "utf8mb4"  # all of Unicode; MySQL's "utf8" stops at 3 bytes and would refuse emoji
COLLATION = "utf8mb4_bin"  # exact comparison, as in SQLite (JIDs themselves are VARBINARY anyway)
# TRADITIONAL = strict mode: a value that does not fit is an error, never silently truncated or zeroed.
SESSION_SETUP = "SET SESSION sql_mode = 'TRADITIONAL', time_zone = '+00:00'"
MIGRATION_LOCK = "nitro.migrations"  # GET_LOCK name: server-wide, so per database server, not per schema
MIGRATION_LOCK_WAIT = 600  # seconds a node waits for another node's migrations to finish
MIGRATION_TIMEOUT = 3600.0  # seconds one migration statement may take (an ALTER of a large archive)


def is_mysql(url: URL) -> bool:
    return url.get_backend_name() in MYSQL_BACKENDS


def _connect_args(settings: StorageSection) -> dict[str, Any]:
    return {
        "charset": CHARSET,
        "init_command": SESSION_SETUP,
        # asyncmy: connect_timeout bounds the TCP connect; read_timeout bounds every wait for the server,
        # including the handshake, so a frozen server fails the request instead of hanging it. A timed
        # out connection is closed by asyncmy and discarded by the pool (error 2013, a disconnect).
        "connect_timeout": settings.connect_timeout,
        "read_timeout": settings.query_timeout,
    }


def mysql_engine(url: URL, settings: StorageSection) -> AsyncEngine:
    """A pooled engine for a `mysql+asyncmy://` (or `mariadb+asyncmy://`) URL."""
    if url.query.get("charset", CHARSET) != CHARSET:
        raise ValueError(f"the MariaDB/MySQL DSN must use charset {CHARSET}, not {url.query['charset']!r}")
    return create_async_engine(
        url.difference_update_query(["charset"]),
        hide_parameters=True,  # error messages must not quote SCRAM keys or message bodies
        connect_args=_connect_args(settings),
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        pool_recycle=int(settings.pool_recycle),  # below the server's wait_timeout (8 h by default)
        pool_pre_ping=settings.pool_pre_ping,  # a connection the server dropped is replaced, not used
    )


def migration_engine(url: URL) -> AsyncEngine:
    """One unpooled connection for the migrations, whose statements (and the wait for the migration
    lock) may take far longer than `query_timeout` allows a request."""
    return _unpooled(url, StorageSection(query_timeout=MIGRATION_TIMEOUT))


def _unpooled(url: URL, settings: StorageSection) -> AsyncEngine:
    return create_async_engine(
        url.difference_update_query(["charset"]),
        hide_parameters=True,
        connect_args=_connect_args(settings),
        poolclass=NullPool,
    )


def quote_name(name: str) -> str:
    """A MySQL identifier in backquotes; a database name from the DSN is checked, not trusted."""
    if not name or len(name) > 64 or "\x00" in name or name != name.rstrip():
        raise ValueError(f"not a usable MariaDB database name: {name!r}")
    return "`" + name.replace("`", "``") + "`"


async def ensure_database(url: URL, settings: StorageSection) -> bool:
    """Create the DSN's database (utf8mb4, binary collation) when it is missing; True if it was created.

    Raises StorageUnavailable when the server cannot be reached.
    """
    if not url.database:
        raise ValueError("the MariaDB/MySQL DSN names no database (…/DATABASE at its end)")
    engine = _unpooled(url.set(database=""), settings)
    try:
        with translate_errors():
            return await _create_if_missing(engine, url.database)
    finally:
        await engine.dispose()


async def _create_if_missing(engine: AsyncEngine, database: str) -> bool:
    async with engine.connect() as conn:
        exists = await conn.scalar(
            text("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = :name"),
            {"name": database},
        )
        if exists:
            return False
        await conn.execute(
            text(
                f"CREATE DATABASE IF NOT EXISTS {quote_name(database)} "
                f"CHARACTER SET {CHARSET} COLLATE {COLLATION}"
            )
        )
        log.info("created MariaDB database %s", database)
        return True


@asynccontextmanager
async def migration_lock(conn: AsyncConnection) -> AsyncIterator[None]:
    """Hold the server-wide migration lock (GET_LOCK) on `conn`: other nodes wait until it is released."""
    lock = {"name": MIGRATION_LOCK, "wait": MIGRATION_LOCK_WAIT}
    got = await conn.scalar(text("SELECT GET_LOCK(:name, :wait)"), lock)
    if got != 1:
        raise TimeoutError(f"another node held the migration lock for more than {MIGRATION_LOCK_WAIT} s")
    try:
        yield
    finally:
        await conn.scalar(text("SELECT RELEASE_LOCK(:name)"), {"name": MIGRATION_LOCK})
