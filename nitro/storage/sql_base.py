"""What every SQL repository shares: error translation, the engine with its writing view, keys, rows."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, ParamSpec, TypeVar

import aiosqlite
from sqlalchemy import CursorResult, Executable, Row, bindparam, exc, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from nitro.storage.errors import NoSuchAccount, StorageError, StorageUnavailable
from nitro.storage.schema import CONTACT_MAX_BYTES, USERNAME_MAX_BYTES, accounts
from nitro.storage.sqlite_read import Busy, LoopReader, Reader
from nitro.storage.sqlite_write import CompiledWrite, immediate_transaction, write_each, write_once

WRITE = "nitro_write"  # execution option marking a transaction that writes (SQLite: BEGIN IMMEDIATE)
DELETE_CHUNK = 500  # ids per DELETE … IN (…), well below every backend's bound-parameter limit

_P = ParamSpec("_P")
_R = TypeVar("_R")

# Errors of the request itself (a bug or bad data): retrying cannot help.
_REQUEST_ERRORS = (exc.IntegrityError, exc.ProgrammingError, exc.DataError, exc.NotSupportedError)
# Everything else the driver or pool raises means the backend is unreachable, locked, timed out or
# broken (OperationalError, InterfaceError, "file is not a database" DatabaseError, pool TimeoutError,
# and OSError, which includes asyncio's TimeoutError).
_BACKEND_ERRORS = (exc.DBAPIError, exc.TimeoutError, exc.DisconnectionError, OSError)


# ---------------------------------------------------------------------------------------------------------
# Error translation: third-party errors become ours where they enter.


def _describe(error: BaseException) -> str:
    """The driver's message only: SQLAlchemy's own text quotes the SQL statement."""
    original = getattr(error, "orig", None) or error
    return f"{type(original).__name__}: {original}"


def _translation(error: Exception) -> StorageError | None:
    """Our error for a third-party one (None: not one to translate, raise it as it is)."""
    if isinstance(error, StorageError):
        return None
    if isinstance(error, _REQUEST_ERRORS):
        return StorageError(_describe(error))
    if isinstance(error, _BACKEND_ERRORS):
        return StorageUnavailable(_describe(error))
    return None


@contextmanager
def translate_errors() -> Iterator[None]:
    try:
        yield
    except Exception as error:
        translation = _translation(error)
        if translation is None:
            raise
        raise translation from error


# InnoDB chose this transaction as a deadlock victim and rolled it back: nothing was written, and each
# repository method is one transaction (or idempotent chunks), so running it again is safe.
_DEADLOCK = 1213
_DEADLOCK_RETRIES = 2


def _is_deadlock(error: Exception) -> bool:
    original = getattr(error, "orig", None)
    return bool(getattr(original, "args", None)) and original.args[0] == _DEADLOCK  # type: ignore[union-attr]


def translated(method: Callable[_P, Awaitable[_R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
    # try/except in the wrapper itself: a context manager per call cost more CPU than a loop read (logins)
    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        for attempt in range(_DEADLOCK_RETRIES + 1):
            try:
                return await method(*args, **kwargs)
            except Exception as error:
                translation = _translation(error)
                if translation is None:
                    raise
                retry = isinstance(translation, StorageUnavailable) and _is_deadlock(error)
                if attempt == _DEADLOCK_RETRIES or not retry:
                    raise translation from error
        raise AssertionError("unreachable")

    return wrapper


# ---------------------------------------------------------------------------------------------------------
# Keys and rows.


def username_key(username: str) -> bytes:
    raw = username.encode()
    if not 0 < len(raw) <= USERNAME_MAX_BYTES:
        raise ValueError(f"a username is 1 to {USERNAME_MAX_BYTES} bytes of UTF-8, not {len(raw)}")
    return raw


def hashed_key(value: str, *, max_bytes: int, what: str) -> tuple[bytes, bytes]:
    """The value's UTF-8 bytes and their SHA-256, for a key too long to index itself (see schema.py)."""
    raw = value.encode()
    if not 0 < len(raw) <= max_bytes:
        raise ValueError(f"a {what} is 1 to {max_bytes} bytes of UTF-8, not {len(raw)}")
    return raw, hashlib.sha256(raw).digest()


def contact_keys(contact: str) -> tuple[bytes, bytes]:
    """A JID's UTF-8 bytes and their SHA-256, which is what primary keys and indexes hold."""
    return hashed_key(contact, max_bytes=CONTACT_MAX_BYTES, what="JID")


def inserted_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None, "a single-row INSERT reports its primary key"
    return int(key[0])


def json_strings(values: tuple[str, ...]) -> str:
    if not all(isinstance(value, str) for value in values):
        raise TypeError("expected strings")
    return json.dumps(list(values), ensure_ascii=False)


def strings_from_json(text: str) -> tuple[str, ...]:
    values = json.loads(text)
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise StorageError(f"expected a JSON array of strings, not {text[:100]!r}")
    return tuple(values)


# ---------------------------------------------------------------------------------------------------------
# The database.


async def all_rows(
    conn: Reader, query: Executable, parameters: Mapping[str, Any] | None = None
) -> Sequence[Row[Any]]:
    return (await conn.execute(query, parameters)).all()


async def one_or_none(
    conn: Reader, query: Executable, parameters: Mapping[str, Any] | None = None
) -> Row[Any] | None:
    return (await conn.execute(query, parameters)).one_or_none()


# Built once: a statement's construction and cache key cost more CPU than SQLite's answer (login reads).
_ACCOUNT_ID = select(accounts.c.id).where(accounts.c.username == bindparam("username"))
_ACCOUNT_ID_LOCKED = _ACCOUNT_ID.with_for_update()


class Database:
    """The engine, plus a view of it whose transactions announce that they write.

    On a SQLite file, every write of this process goes through `write_engine`: one connection (SQLite
    takes one writer at a time anyway), whose `PRAGMA data_version` therefore moves only when another
    process commits (`writer_data_version`); and reads (`read`) run on the event loop on a connection of
    their own that never writes (sqlite_read.py). Elsewhere reads and writes share `engine`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        write_engine: AsyncEngine | None = None,
        loop_reader: LoopReader | None = None,
    ) -> None:
        self.engine = engine
        self.write_engine = write_engine
        self.loop_reader = loop_reader
        writing: dict[str, Any] = {WRITE: True}
        if engine.dialect.name in ("mysql", "mariadb"):
            # Writers lock the account row first and then see the latest commits; READ COMMITTED takes no
            # gap locks, which under REPEATABLE READ deadlock writers of different accounts. Readers keep
            # REPEATABLE READ: their statements share one snapshot (a roster's items and its version).
            writing["isolation_level"] = "READ COMMITTED"
        self.writer = (engine if write_engine is None else write_engine).execution_options(**writing)
        self._compiled: dict[Executable, CompiledWrite] = {}  # write_one's statements, for SQLite

    async def dispose(self) -> None:
        """Close every pooled connection, the writing one included (as when the database restarts)."""
        await self.engine.dispose()
        if self.write_engine is not None:
            await self.write_engine.dispose()
        if self.loop_reader is not None:
            self.loop_reader.dispose()

    async def read(self, body: Callable[[Reader], Awaitable[_R]]) -> _R:
        """`body` in one read transaction: on the loop's connection where there is one and it answers at
        once (sqlite_read.py), else on a pooled connection of `engine`. `body` only reads and consumes its
        results before returning: it may run twice (after a busy first try)."""
        if self.loop_reader is not None:
            try:
                return await self.loop_reader.read(body)
            except Busy:
                pass
        async with self.engine.connect() as conn:
            return await body(conn)

    async def rows(self, query: Executable, parameters: Mapping[str, Any] | None = None) -> Sequence[Any]:
        """The rows of one SELECT (see `read`), with the values of its `bindparam`s: Rows, or on the loop's
        connection named tuples (sqlite_select.py); both read by column name and by position."""
        if self.loop_reader is not None:
            try:
                found = self.loop_reader.rows(query, parameters)
            except Busy:
                async with self.engine.connect() as conn:
                    return await all_rows(conn, query, parameters)
            if found is not None:
                return found
        return await self.read(lambda conn: all_rows(conn, query, parameters))

    async def one_or_none(self, query: Executable, parameters: Mapping[str, Any] | None = None) -> Any:
        """The row of a SELECT of at most one row (see `rows`), with the values of its `bindparam`s."""
        found = await self.rows(query, parameters)
        if len(found) > 1:
            raise exc.MultipleResultsFound("Multiple rows were found when one or none was required")
        return found[0] if found else None

    async def write_one(self, statement: Executable, parameters: Mapping[str, Any]) -> int:
        """One INSERT, UPDATE or DELETE as a transaction of its own, with the values of its `bindparam`s;
        how many rows it wrote. On a SQLite file, one trip to the writing connection's thread
        (sqlite_write.py); elsewhere, a writing transaction."""
        if self.write_engine is None:
            async with self.writer.begin() as conn:
                return (await conn.execute(statement, parameters)).rowcount
        compiled = self._compiled_write(statement, self.write_engine)
        async with self.write_engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert isinstance(driver, aiosqlite.Connection), "SQLite engines are aiosqlite's"
            return await write_once(driver, compiled, parameters)

    async def write_many(self, statement: Executable, rows: Sequence[Mapping[str, Any]]) -> int:
        """One INSERT, UPDATE or DELETE run once per row of values, all in one transaction; how many rows
        it wrote in all. On a SQLite file, BEGIN IMMEDIATE, one executemany and COMMIT on the writing
        connection (a trip to its thread each); elsewhere, a writing transaction."""
        if not rows:
            return 0
        if self.write_engine is None:
            async with self.writer.begin() as conn:
                return (await conn.execute(statement, list(rows))).rowcount
        compiled = self._compiled_write(statement, self.write_engine)
        async with self.sqlite_writing() as driver:
            return await write_each(driver, compiled, rows)

    def _compiled_write(self, statement: Executable, engine: AsyncEngine) -> CompiledWrite:
        compiled = self._compiled.get(statement)
        if compiled is None:
            compiled = self._compiled[statement] = CompiledWrite.of(statement, engine.dialect)
        return compiled

    @asynccontextmanager
    async def sqlite_writing(self) -> AsyncIterator[aiosqlite.Connection]:
        """A writing transaction on a SQLite file's writing connection, for statements sent to its driver
        directly (sqlite_write.py): committed when the block ends, rolled back if it fails."""
        assert self.write_engine is not None, "only SQLite files have a writing connection of their own"
        async with self.write_engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert isinstance(driver, aiosqlite.Connection), "SQLite engines are aiosqlite's"
            async with immediate_transaction(driver):
                yield driver

    async def writer_data_version(self) -> int:
        """`PRAGMA data_version` of the writing connection (SQLite with `write_engine` only): it changes
        when, and only when, a connection other than that one committed — another process, since all of
        this process's writes use it. Read outside any transaction, so it is current."""
        assert self.write_engine is not None, "only SQLite files have a writing connection of their own"
        async with self.write_engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            rows = await driver.execute_fetchall("PRAGMA data_version")
            return int(next(iter(rows))[0])

    async def account_id(self, conn: Reader, username: str, *, lock: bool = False) -> int | None:
        """The account's id; `lock` holds its row until commit (MariaDB; SQLite's write lock is global)."""
        query = _ACCOUNT_ID_LOCKED if lock else _ACCOUNT_ID
        account_id: int | None = (
            await conn.execute(query, {"username": username_key(username)})
        ).scalar_one_or_none()
        return account_id

    async def existing_account_id(self, conn: AsyncConnection, username: str) -> int:
        """The account's id, its row locked for a write; raises NoSuchAccount."""
        account_id = await self.account_id(conn, username, lock=True)
        if account_id is None:
            raise NoSuchAccount(username)
        return account_id
