"""One-statement writes to a SQLite file in one trip to aiosqlite's thread, and writing transactions of
statements sent to the driver (nitro/storage/sqlite_write.py): committed when they return or end, a failing
transaction leaving nothing, the driver's errors wrapped as SQLAlchemy's, bad input refused."""

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
from nitro.storage.sqlite_write import CompiledWrite, immediate_transaction, write_once

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
        whole_second = {"username": b"nurse", "seen_at": seen.replace(microsecond=0), "status": "third"}
        assert (
            await db.write_one(upsert, whole_second) == 1
        )  # SQLite's DATETIME text, as SQLAlchemy writes it
        assert rows(path, "SELECT seen_at FROM last_activity") == [("2026-03-01 12:30:05.000000",)]
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


_ADD = "INSERT INTO accounts (username) VALUES (?)"
_NAMES = "SELECT username FROM accounts ORDER BY id"


async def test_a_transaction_is_committed_when_its_block_ends(tmp_path: Path) -> None:
    path = tmp_path / "nitro.db"
    async with open_database(f"sqlite+aiosqlite:///{path}") as db:
        async with db.sqlite_writing() as driver:
            await driver.executemany(_ADD, [(b"juliet",), (b"romeo",)])
            assert rows(path, _NAMES) == []  # another process sees nothing before the commit
        assert rows(path, _NAMES) == [(b"juliet",), (b"romeo",)]
        assert not driver.in_transaction


async def test_a_failing_transaction_leaves_nothing_and_its_errors_are_wrapped(tmp_path: Path) -> None:
    path = tmp_path / "nitro.db"
    async with open_database(f"sqlite+aiosqlite:///{path}") as db:
        with pytest.raises(exc.IntegrityError):  # UNIQUE on the batch's third row: none of it stays
            async with db.sqlite_writing() as driver:
                await driver.executemany(_ADD, [(b"juliet",), (b"romeo",), (b"juliet",)])
        assert rows(path, _NAMES) == []

        async def fail_after_a_write() -> None:
            async with db.sqlite_writing() as driver:
                await driver.execute(_ADD, (b"juliet",))
                raise ValueError("not ours")

        with pytest.raises(ValueError, match="not ours"):  # the body's own errors pass unchanged
            await fail_after_a_write()
        assert rows(path, _NAMES) == []
        async with db.sqlite_writing() as driver:  # the connection is usable again
            await driver.execute(_ADD, (b"nurse",))
        assert rows(path, _NAMES) == [(b"nurse",)]


async def test_a_transaction_waits_for_the_write_lock_and_fails_as_sqlalchemy_would(tmp_path: Path) -> None:
    path = tmp_path / "nitro.db"
    async with open_database(f"sqlite+aiosqlite:///{path}?timeout=0.2") as db:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            with pytest.raises(exc.OperationalError, match="locked"):
                async with db.sqlite_writing() as driver:
                    await driver.execute(_ADD, (b"juliet",))
            other.execute("ROLLBACK")
        finally:
            other.close()
        async with db.sqlite_writing() as driver:
            await driver.execute(_ADD, (b"juliet",))
        assert rows(path, _NAMES) == [(b"juliet",)]
        assert db.write_engine is not None
        async with db.write_engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert isinstance(raw, aiosqlite.Connection)
            await raw.execute("BEGIN")
            with pytest.raises(RuntimeError, match="outside any transaction"):
                async with immediate_transaction(raw):
                    pass
            await raw.rollback()


def test_a_statement_is_compiled_for_sqlite_only_and_needs_every_value() -> None:
    compiled = CompiledWrite.of(_LAST_ACTIVITY_UPSERTS["sqlite"], sqlite.dialect())
    assert compiled.names == ("seen_at", "status", "username")
    assert compiled.sql.startswith("INSERT INTO last_activity")
    with pytest.raises(ValueError, match="no value for status, username"):
        compiled.parameters({"seen_at": datetime.now(UTC)})
    with pytest.raises(ValueError, match="not a SQLite statement"):
        CompiledWrite.of(_LAST_ACTIVITY_UPSERTS["mysql"], mysql.dialect())
