"""One-statement writes to a SQLite file in one trip to aiosqlite's thread, and batches of one statement in
one transaction (nitro/storage/sqlite_write.py): committed when they return, a failing batch leaving
nothing, the driver's errors wrapped as SQLAlchemy's, bad input refused."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite
import pytest
from sqlalchemy import bindparam, exc, insert, update
from sqlalchemy.dialects import mysql, sqlite

from nitro.storage.schema import accounts
from nitro.storage.sql import open_database
from nitro.storage.sql_userdata import _LAST_ACTIVITY_UPSERTS
from nitro.storage.sqlite_write import CompiledWrite, write_many, write_once

_RENAME = update(accounts).where(accounts.c.username == bindparam("old")).values(username=bindparam("new"))


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    """What another process reading the file sees."""
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


async def test_a_write_is_committed_when_it_returns_and_counts_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "nitro.db"
    async with open_database(f"sqlite+aiosqlite:///{path}") as db:
        assert (
            await db.write_one(insert(accounts).values(username=bindparam("name")), {"name": b"juliet"}) == 1
        )
        assert rows(path, "SELECT username FROM accounts") == [(b"juliet",)]
        assert await db.write_one(_RENAME, {"old": b"romeo", "new": b"x"}) == 0
        assert await db.write_one(_RENAME, {"old": b"juliet", "new": b"nurse"}) == 1
        assert rows(path, "SELECT username FROM accounts") == [(b"nurse",)]
        seen = datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=UTC)
        upsert = _LAST_ACTIVITY_UPSERTS["sqlite"]
        for status in ("first", "second"):  # the bind processors run: an aware time is stored as naive UTC
            assert await db.write_one(upsert, {"username": b"nurse", "seen_at": seen, "status": status}) == 1
        assert rows(path, "SELECT seen_at, status FROM last_activity") == [
            ("2026-03-01 12:30:05.123456", "second")
        ]
        async with db.writer.begin() as conn:  # the writing connection is left outside any transaction
            await conn.execute(_RENAME, {"old": b"nurse", "new": b"juliet"})
        assert rows(path, "SELECT username FROM accounts") == [(b"juliet",)]


async def test_the_drivers_errors_are_wrapped_as_sqlalchemy_wraps_them(tmp_path: Path) -> None:
    path = tmp_path / "nitro.db"
    async with open_database(f"sqlite+aiosqlite:///{path}?timeout=0.2") as db:
        add = insert(accounts).values(username=bindparam("name"))
        await db.write_one(add, {"name": b"juliet"})
        with pytest.raises(exc.IntegrityError):
            await db.write_one(add, {"name": b"juliet"})  # UNIQUE
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            with pytest.raises(exc.OperationalError, match="locked"):
                await db.write_one(add, {"name": b"romeo"})
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert await db.write_one(add, {"name": b"romeo"}) == 1


async def test_a_write_inside_a_transaction_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nitro.db"
    async with open_database(f"sqlite+aiosqlite:///{path}") as db:
        assert db.write_engine is not None
        compiled = CompiledWrite.of(_RENAME, db.write_engine.dialect)
        async with db.write_engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert isinstance(driver, aiosqlite.Connection)
            await driver.execute("BEGIN")
            with pytest.raises(RuntimeError, match="outside any transaction"):
                await write_once(driver, compiled, {"old": b"a", "new": b"b"})
            await driver.rollback()


async def test_a_batch_is_one_transaction_committed_when_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "nitro.db"
    async with open_database(f"sqlite+aiosqlite:///{path}") as db:
        add = insert(accounts).values(username=bindparam("name"))
        assert await db.write_many(add, [{"name": b"juliet"}, {"name": b"romeo"}]) == 2
        assert rows(path, "SELECT username FROM accounts ORDER BY id") == [(b"juliet",), (b"romeo",)]
        assert await db.write_many(add, []) == 0
        renames = [{"old": b"juliet", "new": b"nurse"}, {"old": b"nobody", "new": b"x"}]
        assert await db.write_many(_RENAME, renames) == 1  # the rows written, over all of the batch
        with pytest.raises(exc.IntegrityError):  # UNIQUE on the batch's third row: none of it stays
            await db.write_many(add, [{"name": b"tybalt"}, {"name": b"paris"}, {"name": b"romeo"}])
        assert rows(path, "SELECT username FROM accounts ORDER BY id") == [(b"nurse",), (b"romeo",)]
        with pytest.raises(ValueError, match="no value for name"):
            await db.write_many(add, [{"name": b"tybalt"}, {}])
        assert await db.write_many(add, [{"name": b"tybalt"}]) == 1  # the connection is usable again
        assert len(rows(path, "SELECT username FROM accounts")) == 3


async def test_a_batch_waits_for_the_write_lock_and_fails_as_sqlalchemy_would(tmp_path: Path) -> None:
    path = tmp_path / "nitro.db"
    async with open_database(f"sqlite+aiosqlite:///{path}?timeout=0.2") as db:
        add = insert(accounts).values(username=bindparam("name"))
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            with pytest.raises(exc.OperationalError, match="locked"):
                await db.write_many(add, [{"name": b"juliet"}])
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert await db.write_many(add, [{"name": b"juliet"}]) == 1
        assert db.write_engine is not None
        compiled = CompiledWrite.of(add, db.write_engine.dialect)
        async with db.write_engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert isinstance(driver, aiosqlite.Connection)
            await driver.execute("BEGIN")
            with pytest.raises(RuntimeError, match="outside any transaction"):
                await write_many(driver, compiled, [{"name": b"romeo"}])
            await driver.rollback()


def test_a_statement_is_compiled_for_sqlite_only_and_needs_every_value() -> None:
    compiled = CompiledWrite.of(_LAST_ACTIVITY_UPSERTS["sqlite"], sqlite.dialect())
    assert compiled.names == ("seen_at", "status", "username")
    assert compiled.sql.startswith("INSERT INTO last_activity")
    with pytest.raises(ValueError, match="no value for status, username"):
        compiled.parameters({"seen_at": datetime.now(UTC)})
    with pytest.raises(ValueError, match="not a SQLite statement"):
        CompiledWrite.of(_LAST_ACTIVITY_UPSERTS["mysql"], mysql.dialect())
