"""Reads of a SQLite file on the event loop: one synchronous sqlite3 connection that never waits, so a read
costs no hop to aiosqlite's worker thread; a busy database sends the read down the async path instead.

Why on the loop: a login's reads each made ~8 round trips to aiosqlite's thread (BEGIN, cursor, execute,
fetch, close, ROLLBACK), each a queue put, a GIL hand-off and a call_soon_threadsafe: more CPU than the
SELECT. A read of a small, page-cached database takes microseconds of SQLite, less than one such hop.
The risk is a read that does disk I/O (a cold page cache on a slow disk): it stalls every session for that
long. We accept it for the embedded default, whose databases are small and hot after the first reads; the
archive's page queries and counts, which may walk many index entries, stay on the async path
(sql_archive.py), and a deployment whose data does not stay cached is one that should run MariaDB (whose
reads all stay off the loop).
It never waits for a lock: in WAL mode readers do not wait on the writer, and with timeout=0 the rare
SQLITE_BUSY (another process holding the file in exclusive locking mode, a WAL recovery, the last
connection closing) raises at once; the read then runs again on the engine's pooled async connections,
which wait up to the busy timeout off the loop (sqlite_watch.DataVersion, also on the loop, likewise never
waits). The connection is query_only: writes stay on the writing connection, off the loop, and the cache
rules of tiers.py (one writing connection, data_version) are unchanged.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Executable, Result, create_engine, event, exc
from sqlalchemy.engine import URL

from nitro.storage.sqlite_select import CompiledSelect, is_loop_compiled

log = logging.getLogger(__name__)

T = TypeVar("T")

_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class Reader(Protocol):
    """What a read needs of a connection: an AsyncConnection, or the loop's synchronous one."""

    async def execute(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> Result[Any]: ...


class Busy(Exception):
    """The loop's connection cannot answer at once: read through the async engine instead."""


class _OnLoop:
    """A synchronous Connection behind the async `execute` that reads are written against; it never
    suspends, so a read's statements run in one turn of the loop."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def execute(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> Result[Any]:
        return self._conn.execute(statement, parameters)


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # BEGIN is ours (_on_begin), as on the async engine
    dbapi_connection.execute("PRAGMA query_only=ON")  # a write here would be a bug: it fails instead


def _on_begin(conn: Connection) -> None:
    # A deferred transaction: a read's statements share one snapshot, taken at its first SELECT. Sent to
    # sqlite3 directly: through SQLAlchemy, BEGIN cost as much CPU as the SELECT.
    conn.connection.driver_connection.execute("BEGIN")  # type: ignore[union-attr]


def _is_busy(error: exc.DBAPIError) -> bool:
    return _is_busy_sqlite(error.orig)


def _is_busy_sqlite(error: BaseException | None) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _BUSY


class LoopReader:
    """Runs reads on one synchronous connection to the SQLite file at `url` (any driver; query dropped)."""

    def __init__(self, url: URL) -> None:
        self.engine = create_engine(
            url.set(drivername="sqlite+pysqlite", query={}),
            hide_parameters=True,
            pool_size=1,
            max_overflow=0,
            connect_args={"timeout": 0, "check_same_thread": False},
        )
        event.listen(self.engine, "connect", _on_connect)
        event.listen(self.engine, "begin", _on_begin)
        self._conn: Connection | None = None  # kept checked out between reads (a checkout costs CPU)
        self._in_use = False
        self.fallbacks = 0  # reads sent to the async path (busy, or the connection in use)
        self._compiled: dict[Executable, CompiledSelect] = {}  # see `rows`

    async def read(self, body: Callable[[Reader], Awaitable[T]]) -> T:
        """`body` on the loop's connection, in one read transaction; raises Busy when it cannot answer
        without waiting (nothing was read: run `body` elsewhere)."""
        with self._held() as conn:
            try:
                result = await body(_OnLoop(conn))
                conn.rollback()  # ends the read transaction: the next read sees the latest commit
                return result
            except exc.OperationalError as error:
                if not _is_busy(error):
                    raise
                raise self._busy(error.orig) from error

    def rows(self, statement: Executable, parameters: Mapping[str, Any] | None = None) -> list[Any] | None:
        """The rows of one SELECT marked `loop_compiled` (sqlite_select.py), run alone on the loop's
        connection: in autocommit the statement is its own read transaction (one snapshot, ended when its
        rows are all fetched), as BEGIN, SELECT, ROLLBACK would be, without the two round trips or
        SQLAlchemy's work per execution. None when the statement is not marked, or cannot run this way
        (use `read`); raises Busy as `read` does."""
        compiled = self._compiled.get(statement)
        if compiled is None:
            if not is_loop_compiled(statement):
                return None
            compiled = CompiledSelect.of(statement, self.engine.dialect)
            if compiled is None:  # loop_compiled checked it with another instance of this dialect
                raise RuntimeError(f"cannot compile {statement} for sqlite3")
            self._compiled[statement] = compiled
        prepared = compiled.prepare(parameters)
        if prepared is None:
            return None
        with self._held() as conn:
            driver = conn.connection.driver_connection
            assert isinstance(driver, sqlite3.Connection)
            assert not driver.in_transaction, "reads end their transactions"
            try:
                return compiled.rows(driver, *prepared)
            except sqlite3.Error as error:
                if not _is_busy_sqlite(error):
                    raise exc.DBAPIError.instance(
                        prepared[0], None, error, sqlite3.Error, hide_parameters=True
                    ) from error
                raise self._busy(error) from error

    @contextmanager
    def _held(self) -> Iterator[Connection]:
        """The loop's connection for one read (checked out once, kept between reads); raises Busy while
        another read holds it. A read that fails gives it back to the pool (see `_close`)."""
        if self._in_use:  # a body that awaited something else while holding the connection
            self.fallbacks += 1
            raise Busy("the loop's connection is in use")
        self._in_use = True
        try:
            if self._conn is None:
                self._conn = self.engine.connect()
            yield self._conn
        except BaseException:
            self._close()
            raise
        finally:
            self._in_use = False

    def _busy(self, error: BaseException | None) -> Busy:
        """SQLite was busy: the read goes to the async path (counted, logged at DEBUG)."""
        self.fallbacks += 1
        log.debug("SQLite busy for a read on the loop: %s", error)
        return Busy(str(error))

    def _close(self) -> None:
        """Back to the pool, which rolls back (the sqlite3 connection stays open for the next read)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def dispose(self) -> None:
        self._close()
        self.engine.dispose()
