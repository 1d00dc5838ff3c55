"""One-statement writes to a SQLite file in one trip to aiosqlite's worker thread, and writing transactions
of statements sent to the driver directly.

Through SQLAlchemy, a write transaction of one statement makes five trips (BEGIN, cursor, execute, close,
COMMIT), each a queue put, a GIL hand-off and a call_soon_threadsafe: more CPU on the event loop than the
statement itself (the logout's last-activity upsert, now written in batches with `write_each`:
last_batch.py). A single statement needs no transaction of its own making: on the writing connection, which
runs in autocommit (sql.py emits every BEGIN itself), SQLite makes it one atomic, durable transaction,
waiting for the write lock up to the busy timeout as BEGIN IMMEDIATE would. The statement is compiled once
by SQLAlchemy for the connection's dialect; its bind values go through the column types' processors, as
SQLAlchemy would send them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import aiosqlite
from sqlalchemy import exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Executable
from sqlalchemy.sql.compiler import SQLCompiler


@dataclass(frozen=True, slots=True)
class CompiledWrite:
    """A statement's SQL text for sqlite3 (qmark), and how to turn named values into its parameters."""

    sql: str
    names: tuple[str, ...]  # of the bind parameters, in the order of the `?`s
    processors: tuple[Callable[[Any], Any] | None, ...]

    @classmethod
    def of(cls, statement: Executable, dialect: Dialect) -> CompiledWrite:
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        assert isinstance(compiled, SQLCompiler)
        if compiled.positiontup is None or dialect.paramstyle != "qmark":
            raise ValueError(f"{dialect.name} with {dialect.paramstyle} parameters: not a SQLite statement")
        names = tuple(compiled.positiontup)
        # The type as adapted to the dialect (as SQLAlchemy executes it): a TypeDecorator's own
        # bind_processor skips its dialect implementation's (SQLite's DATETIME text format).
        processors = tuple(
            compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
        )
        return cls(compiled.string, names, processors)

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        missing = [name for name in self.names if name not in values]
        if missing:
            raise ValueError(f"no value for {', '.join(missing)}")
        return tuple(
            values[name] if process is None else process(values[name])
            for name, process in zip(self.names, self.processors, strict=True)
        )


async def write_once(
    driver: aiosqlite.Connection, statement: CompiledWrite, values: Mapping[str, Any]
) -> int:
    """Run the statement as its own transaction on `driver` (in autocommit, outside any transaction) and
    return how many rows it wrote; the driver's errors are wrapped as SQLAlchemy wraps them."""
    if driver.in_transaction:
        raise RuntimeError("a one-statement write needs a connection outside any transaction")
    parameters = statement.parameters(values)
    with _wrapped_errors(statement.sql):
        cursor = await driver.execute(statement.sql, parameters)
    return cursor.rowcount


async def write_each(
    driver: aiosqlite.Connection, statement: CompiledWrite, rows: Sequence[Mapping[str, Any]]
) -> int:
    """Run the statement once per row of values on `driver`, in one trip to its thread (executemany), within
    the caller's transaction (`immediate_transaction`); how many rows it wrote in all. Errors wrapped as
    SQLAlchemy wraps them."""
    parameters = [statement.parameters(values) for values in rows]
    with _wrapped_errors(statement.sql):
        cursor = await driver.executemany(statement.sql, parameters)
    return cursor.rowcount


@contextmanager
def _wrapped_errors(sql: str) -> Iterator[None]:
    """The driver's errors wrapped as SQLAlchemy wraps them (then translated as any: sql_base.py)."""
    try:
        yield
    except sqlite3.Error as error:
        raise exc.DBAPIError.instance(sql, None, error, sqlite3.Error, hide_parameters=True) from error


@asynccontextmanager
async def immediate_transaction(driver: aiosqlite.Connection) -> AsyncIterator[aiosqlite.Connection]:
    """A writing transaction on `driver` (in autocommit, outside any transaction) for statements sent to it
    directly: BEGIN IMMEDIATE, the body's statements, COMMIT — one trip each, where SQLAlchemy makes three
    or more per statement. ROLLBACK if the body fails; the driver's errors wrapped as SQLAlchemy wraps
    them."""
    if driver.in_transaction:
        raise RuntimeError("a writing transaction needs a connection outside any transaction")
    statement = "BEGIN IMMEDIATE"
    try:
        await driver.execute(statement)
        try:
            statement = "(the transaction's statements)"
            yield driver
            statement = "COMMIT"
            await driver.execute(statement)
        except BaseException:
            if driver.in_transaction:
                await driver.execute("ROLLBACK")
            raise
    except sqlite3.Error as error:
        raise exc.DBAPIError.instance(statement, None, error, sqlite3.Error, hide_parameters=True) from error
