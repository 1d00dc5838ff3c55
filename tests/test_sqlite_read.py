"""Reads of a SQLite file on the event loop (sqlite_read.py): they answer while another connection holds
the write lock, never see its uncommitted rows, never write, and a busy database sends them to the async
path, which waits off the loop."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from nitro.accounts import create_account
from nitro.storage.errors import StorageUnavailable
from nitro.storage.models import RosterItem
from nitro.storage.protocols import Storage
from nitro.storage.schema import accounts
from nitro.storage.sql import open_database, sql_repositories
from nitro.storage.sql_base import Database, translate_errors
from nitro.storage.sqlite_read import Reader


def dsn(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/nitro.db"


@asynccontextmanager
async def with_alice(tmp_path: Path) -> AsyncIterator[tuple[Database, Storage]]:
    """A SQLite file with reads on the loop, holding the account alice."""
    async with open_database(dsn(tmp_path)) as db:
        storage = sql_repositories(db)
        await create_account(storage, "alice", "secret", iterations=4096)
        yield db, storage


async def test_a_read_answers_on_the_loop_while_another_connection_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    async with with_alice(tmp_path) as (db, storage):
        assert db.loop_reader is not None
        await storage.rosters.put("alice", RosterItem(jid="bob@example.test", name=None, subscription="both"))

        writer = sqlite3.connect(tmp_path / "nitro.db", isolation_level=None, timeout=0)
        try:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("DELETE FROM roster_items")
            writer.execute("UPDATE roster_versions SET version = version + 10")
            roster = await storage.rosters.get("alice")  # the lock is held: the last commit is read
            assert [item.jid for item in roster.items] == ["bob@example.test"]
            assert roster.version == 1
            assert await storage.accounts.get_credentials("alice")
            writer.execute("COMMIT")
        finally:
            writer.close()
        roster = await storage.rosters.get("alice")
        assert roster.items == ()
        assert roster.version == 11
        assert db.loop_reader.fallbacks == 0


async def test_a_busy_database_sends_the_read_to_the_async_path_which_waits_off_the_loop(
    tmp_path: Path,
) -> None:
    async with with_alice(tmp_path) as (db, storage):
        assert db.loop_reader is not None
        await db.dispose()  # no connection of ours open, so another can lock the file for itself

        # Exclusive locking mode holds the file after this write: every other reader gets SQLITE_BUSY.
        blocker = sqlite3.connect(tmp_path / "nitro.db", isolation_level=None, timeout=0)
        blocker.execute("PRAGMA locking_mode=EXCLUSIVE")
        blocker.execute("UPDATE accounts SET username = username")
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, blocker.close)
        turns = 0

        async def turn() -> None:
            nonlocal turns
            while True:
                await asyncio.sleep(0.01)
                turns += 1

        ticker = asyncio.create_task(turn())
        started = time.monotonic()
        try:
            credentials = await storage.accounts.get_credentials("alice")
        finally:
            ticker.cancel()
        assert credentials is not None
        assert set(credentials) == {"SHA-1", "SHA-256"}
        assert time.monotonic() - started >= 0.25  # it waited for the lock…
        assert turns >= 10  # …off the loop, which kept turning
        assert db.loop_reader.fallbacks == 1
        assert await storage.accounts.exists("alice")  # the lock is gone: on the loop again
        assert db.loop_reader.fallbacks == 1


async def test_the_loop_connection_never_writes(tmp_path: Path) -> None:
    async with open_database(dsn(tmp_path)) as db:
        assert db.loop_reader is not None

        async def write(conn: Reader) -> None:
            await conn.execute(insert(accounts).values(username=b"mallory"))

        with pytest.raises(StorageUnavailable, match="readonly"), translate_errors():
            await db.loop_reader.read(write)
        assert await sql_repositories(db).accounts.count() == 0


async def test_a_read_that_fails_leaves_no_transaction_open(tmp_path: Path) -> None:
    async with with_alice(tmp_path) as (db, storage):
        assert db.loop_reader is not None

        async def failing(conn: Reader) -> None:
            await conn.execute(select(accounts.c.id))
            raise ValueError("a bug in the read")

        with pytest.raises(ValueError, match="a bug"):
            await db.loop_reader.read(failing)
        other = sqlite3.connect(tmp_path / "nitro.db", isolation_level=None, timeout=5)
        try:
            other.execute("INSERT INTO accounts (username) VALUES (?)", (b"bob",))  # no snapshot pins it
        finally:
            other.close()
        assert await storage.accounts.exists("bob")
        assert await storage.accounts.count() == 2
