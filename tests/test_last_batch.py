"""Logouts' last-activity writes in batches on a SQLite file (nitro/storage/last_batch.py): many logouts
share a transaction, each caller returns once its value is on disk (or hears why not), a newer value
replaces a queued one, reads see queued values, and a close writes what is queued, retrying a locked
database for a bounded time and logging what could not be written."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import make_config

from nitro.accounts import create_account
from nitro.storage import last_batch
from nitro.storage.errors import NoSuchAccount, StorageUnavailable
from nitro.storage.last_batch import BatchedLastActivity
from nitro.storage.layered import open_storage
from nitro.storage.models import LastActivity
from nitro.storage.sql import open_sql_storage
from nitro.storage.sql_userdata import SqlLastActivityStore

T0 = datetime(2026, 3, 1, 12, 30, 5, tzinfo=UTC)  # a whole second (SQLite's DATETIME text)


def at(seconds: int, status: str = "") -> LastActivity:
    return LastActivity(T0 + timedelta(seconds=seconds), status)


def on_disk(path: Path, username: str) -> tuple[str, str] | None:
    """The row as another connection reads it: committed, not queued."""
    with sqlite3.connect(path) as conn:
        row = conn.execute(
            "SELECT seen_at, status FROM last_activity JOIN accounts ON accounts.id = account_id"
            " WHERE accounts.username = ?",
            (username.encode(),),
        ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


async def test_many_logouts_share_a_transaction_and_are_on_disk_when_set_returns(tmp_path: Path) -> None:
    async with open_storage(make_config(tmp_path)) as storage:
        assert isinstance(storage.last, BatchedLastActivity)
        names = [f"user{n}" for n in range(50)]
        for name in names:
            await create_account(storage, name, "secret")
        await asyncio.gather(*(storage.last.set(name, at(n, f"bye {n}")) for n, name in enumerate(names)))
        assert storage.last.batches <= 2  # gathered, not one transaction each
        for n, name in enumerate(names):
            assert on_disk(tmp_path / "nitro.db", name) == (
                f"2026-03-01 12:30:{5 + n:02d}.000000",
                f"bye {n}",
            )
            assert await storage.last.get(name) == at(n, f"bye {n}")


async def test_writes_made_while_a_batch_commits_make_the_next_batch(tmp_path: Path) -> None:
    async with open_storage(make_config(tmp_path)) as storage:
        assert isinstance(storage.last, BatchedLastActivity)
        for name in ("alice", "bob", "carol", "dave"):
            await create_account(storage, name, "secret")
        first = asyncio.ensure_future(storage.last.set("alice", at(1)))
        await asyncio.sleep(0)  # alice's batch of one is on its way
        await asyncio.gather(*(storage.last.set(name, at(2)) for name in ("bob", "carol", "dave")), first)
        assert storage.last.batches == 2
        for name in ("bob", "carol", "dave"):
            assert on_disk(tmp_path / "nitro.db", name) == ("2026-03-01 12:30:07.000000", "")


async def test_a_newer_value_replaces_a_queued_one_and_reads_see_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(last_batch, "BATCH_DELAY", 0.2)  # a window for the second value to arrive in
    async with open_storage(make_config(tmp_path)) as storage:
        assert isinstance(storage.last, BatchedLastActivity)
        await create_account(storage, "alice", "secret")
        older = asyncio.ensure_future(storage.last.set("alice", at(1, "older")))
        await asyncio.sleep(0)
        assert await storage.last.get("alice") == at(1, "older")  # queued, not yet written
        assert on_disk(tmp_path / "nitro.db", "alice") is None
        newer = asyncio.ensure_future(storage.last.set("alice", at(2, "newer")))
        await asyncio.sleep(0)
        assert await storage.last.get("alice") == at(2, "newer")
        await asyncio.gather(older, newer)  # both return with the newer value's commit
        assert storage.last.batches == 1
        assert on_disk(tmp_path / "nitro.db", "alice") == ("2026-03-01 12:30:07.000000", "newer")


async def test_an_unknown_account_fails_alone_and_bad_values_are_refused_at_once(tmp_path: Path) -> None:
    async with open_storage(make_config(tmp_path)) as storage:
        await create_account(storage, "alice", "secret")
        results = await asyncio.gather(
            storage.last.set("alice", at(1)), storage.last.set("nobody", at(1)), return_exceptions=True
        )
        assert results[0] is None
        assert isinstance(results[1], NoSuchAccount)
        assert await storage.last.get("alice") == at(1)
        assert await storage.last.get("nobody") is None
        with pytest.raises(ValueError, match="timezone"):
            await storage.last.set("alice", LastActivity(datetime(2026, 3, 1, 12, 30), "naive"))
        with pytest.raises(ValueError, match="username"):
            await storage.last.set("", at(1))
        assert await storage.last.get("alice") == at(1)


async def test_a_caller_that_gives_up_leaves_its_value_to_be_written_at_close(tmp_path: Path) -> None:
    async with open_storage(make_config(tmp_path)) as storage:
        await create_account(storage, "alice", "secret")
        caller = asyncio.ensure_future(storage.last.set("alice", at(3, "gone")))
        await asyncio.sleep(0)
        caller.cancel()
    assert on_disk(tmp_path / "nitro.db", "alice") == ("2026-03-01 12:30:08.000000", "gone")


def lock(path: Path) -> sqlite3.Connection:
    """Another connection holding SQLite's write lock (as another process in a long transaction)."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


async def test_a_failed_batch_tells_its_callers(tmp_path: Path) -> None:
    config = make_config(tmp_path, storage={"dsn": f"sqlite+aiosqlite:///{tmp_path}/nitro.db?timeout=0.1"})
    async with open_storage(config) as storage:
        await create_account(storage, "alice", "secret")
        holder = lock(tmp_path / "nitro.db")
        try:
            with pytest.raises(StorageUnavailable, match="locked"):
                await storage.last.set("alice", at(1))
        finally:
            holder.close()
        await storage.last.set("alice", at(2))  # the next batch, with the lock gone
        assert on_disk(tmp_path / "nitro.db", "alice") == ("2026-03-01 12:30:07.000000", "")


async def test_the_close_retries_a_locked_database_then_logs_what_it_could_not_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(last_batch, "FLUSH_DEADLINE", 0.5)
    monkeypatch.setattr(last_batch, "BATCH_DELAY", 60.0)  # nothing is written before the close
    config = make_config(tmp_path, storage={"dsn": f"sqlite+aiosqlite:///{tmp_path}/nitro.db?timeout=0.05"})
    path = tmp_path / "nitro.db"
    callers: list[asyncio.Future[None]] = []
    async with open_storage(config) as storage:
        for name in ("alice", "bob"):
            await create_account(storage, name, "secret")
            callers.append(asyncio.ensure_future(storage.last.set(name, at(1))))
        await asyncio.sleep(0)
        holder = lock(path)
        caplog.set_level(logging.WARNING, logger="nitro.storage.last_batch")
    holder.close()
    assert "last activity of 2 users could not be written" in caplog.text
    assert "retrying" in caplog.text
    for caller in callers:
        with pytest.raises(StorageUnavailable):
            await caller
    assert on_disk(path, "alice") is None


async def test_the_close_writes_once_the_database_is_free_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(last_batch, "BATCH_DELAY", 60.0)
    config = make_config(tmp_path, storage={"dsn": f"sqlite+aiosqlite:///{tmp_path}/nitro.db?timeout=0.05"})
    path = tmp_path / "nitro.db"
    async with open_storage(config) as storage:
        await create_account(storage, "alice", "secret")
        caller = asyncio.ensure_future(storage.last.set("alice", at(4, "late")))
        await asyncio.sleep(0)
        holder = lock(path)
        asyncio.get_running_loop().call_later(0.2, holder.close)  # freed while the close retries
    await caller
    assert on_disk(path, "alice") == ("2026-03-01 12:30:09.000000", "late")


async def test_without_its_writer_a_write_goes_straight_to_the_store(tmp_path: Path) -> None:
    """Before the writer runs, or after the close's flush: nothing is left waiting in a queue."""
    async with open_sql_storage(f"sqlite+aiosqlite:///{tmp_path}/nitro.db") as sql:
        await create_account(sql, "alice", "secret")
        assert isinstance(sql.last, SqlLastActivityStore)
        batched = BatchedLastActivity(sql.last)
        await asyncio.wait_for(batched.set("alice", at(5, "direct")), timeout=5)
        assert batched.batches == 0
        assert on_disk(tmp_path / "nitro.db", "alice") == ("2026-03-01 12:30:10.000000", "direct")
        with pytest.raises(NoSuchAccount):
            await batched.set("nobody", at(5))


async def test_a_cancelled_writer_tells_the_callers_it_leaves_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled rather than stopped (its owner cancelled): no caller is left waiting for ever."""
    monkeypatch.setattr(last_batch, "BATCH_DELAY", 60.0)
    async with open_sql_storage(f"sqlite+aiosqlite:///{tmp_path}/nitro.db") as sql:
        await create_account(sql, "alice", "secret")
        assert isinstance(sql.last, SqlLastActivityStore)
        batched = BatchedLastActivity(sql.last)
        writer = asyncio.ensure_future(batched.run())
        await asyncio.sleep(0)
        caller = asyncio.ensure_future(batched.set("alice", at(1)))
        await asyncio.sleep(0)
        writer.cancel()
        with pytest.raises(StorageUnavailable, match="stopped"):
            await asyncio.wait_for(caller, timeout=5)
        assert writer.cancelled()
        await batched.set("alice", at(2))  # no writer: straight to the store
        assert on_disk(tmp_path / "nitro.db", "alice") == ("2026-03-01 12:30:07.000000", "")
