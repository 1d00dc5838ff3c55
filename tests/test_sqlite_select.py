"""A login's one-statement reads on the loop's connection (sqlite_select.py): compiled once, they return
what SQLAlchemy returns for the same statement and leave no read transaction open; statements not marked
as built once keep going through SQLAlchemy, and one with values of its own cannot be marked."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, select
from sqlalchemy.dialects import sqlite

from nitro.accounts import create_account
from nitro.storage.errors import StorageUnavailable
from nitro.storage.models import RosterItem
from nitro.storage.schema import accounts
from nitro.storage.sql import open_database, sql_repositories
from nitro.storage.sql_accounts import _CREDENTIALS
from nitro.storage.sql_base import Database, all_rows, contact_keys
from nitro.storage.sql_offline import _MESSAGES
from nitro.storage.sql_roster import _ITEMS_FOR, _ROSTER
from nitro.storage.sql_userdata import _BLOCKED
from nitro.storage.sqlite_select import CompiledSelect, loop_compiled

QMARK = sqlite.dialect(paramstyle="qmark")


def test_only_statements_built_once_with_named_parameters_are_compiled() -> None:
    assert CompiledSelect.of(_CREDENTIALS, QMARK) is not None
    assert CompiledSelect.of(_ROSTER, QMARK) is not None
    items_for = CompiledSelect.of(_ITEMS_FOR, QMARK)  # an expanding IN list: one `?` per value
    assert items_for is not None
    prepared = items_for.prepare({"usernames": [b"a", b"b", b"c"], "contact_key": b"k"})
    assert prepared is not None
    sql, parameters = prepared
    assert "IN (?, ?, ?)" in sql
    assert parameters == [b"a", b"b", b"c", b"k"]
    assert items_for.prepare({"usernames": [], "contact_key": b"k"}) is None  # left to SQLAlchemy
    assert CompiledSelect.of(select(accounts.c.id).where(accounts.c.username == b"alice"), QMARK) is None
    assert CompiledSelect.of(select(accounts.c.id).limit(5), QMARK) is None
    assert (
        CompiledSelect.of(select(accounts.c.id, accounts.c.id.label("id")), QMARK) is None
    )  # one name twice
    by_name = select(accounts.c.id).where(accounts.c.username == bindparam("username"))
    compiled = CompiledSelect.of(by_name, QMARK)
    assert compiled is not None
    assert compiled.names == ("username",)


def test_marking_a_statement_not_built_once_fails_at_import() -> None:
    with pytest.raises(ValueError, match="named parameters only"):
        loop_compiled(select(accounts.c.id).where(accounts.c.username == b"alice"))


def as_tuples(rows: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in rows]


async def test_loop_rows_equal_sqlalchemy_rows_and_end_their_read(tmp_path: Path) -> None:
    async with open_database(f"sqlite+aiosqlite:///{tmp_path}/nitro.db") as db:
        assert db.loop_reader is not None
        storage = sql_repositories(db)
        await create_account(storage, "alice", "secret", iterations=4096)
        await storage.rosters.put(
            "alice", RosterItem(jid="bob@example.test", name="Bob", subscription="both")
        )
        await storage.rosters.put("alice", RosterItem(jid="carol@example.test", subscription="to", ask=True))
        await storage.offline.push("alice", b"<message to='alice@example.test'/>", quota=10)
        await storage.blocklist.add("alice", ["mallory@example.test"])

        for statement in (_CREDENTIALS, _ROSTER, _MESSAGES, _BLOCKED):
            for username in (b"alice", b"nobody"):
                parameters = {"username": username}
                fast = db.loop_reader.rows(statement, parameters)
                assert fast is not None
                async with db.engine.connect() as conn:
                    expected = await all_rows(conn, statement, parameters)
                assert as_tuples(fast) == as_tuples(expected)
                assert [row._asdict() for row in fast] == [row._asdict() for row in expected]
        items = {"usernames": [b"alice", b"nobody"], "contact_key": contact_keys("bob@example.test")[1]}
        fast = db.loop_reader.rows(_ITEMS_FOR, items)
        assert fast is not None
        async with db.engine.connect() as conn:
            expected = await all_rows(conn, _ITEMS_FOR, items)
        assert len(fast) == 1
        assert as_tuples(fast) == as_tuples(expected)
        assert await storage.rosters.items_for(["alice", "nobody"], "bob@example.test") == {
            "alice": RosterItem(jid="bob@example.test", name="Bob", subscription="both")
        }
        assert await storage.rosters.items_for([], "bob@example.test") == {}
        unmarked = select(accounts.c.id).where(accounts.c.username == bindparam("username"))
        assert db.loop_reader.rows(unmarked, {"username": b"alice"}) is None  # SQLAlchemy's path
        assert len(await db.rows(unmarked, {"username": b"alice"})) == 1
        assert db.loop_reader.fallbacks == 0

        # The roster read ended its snapshot: another connection's commit is seen by the next read.
        await read_then_commit_elsewhere(db, tmp_path)


async def read_then_commit_elsewhere(db: Database, tmp_path: Path) -> None:
    assert db.loop_reader is not None
    before = db.loop_reader.rows(_ROSTER, {"username": b"alice"})
    assert before is not None
    other = sqlite3.connect(tmp_path / "nitro.db", isolation_level=None, timeout=5)
    try:
        other.execute("UPDATE roster_versions SET version = version + 10")
    finally:
        other.close()
    after = db.loop_reader.rows(_ROSTER, {"username": b"alice"})
    assert after is not None
    assert after[0].roster_version == before[0].roster_version + 10


async def test_a_failing_loop_read_raises_the_storage_error_sqlalchemy_would_and_the_next_read_works(
    tmp_path: Path,
) -> None:
    async with open_database(f"sqlite+aiosqlite:///{tmp_path}/nitro.db") as db:
        assert db.loop_reader is not None
        storage = sql_repositories(db)
        await create_account(storage, "alice", "secret", iterations=4096)
        other = sqlite3.connect(tmp_path / "nitro.db", isolation_level=None, timeout=5)
        try:
            other.execute("ALTER TABLE blocked_jids RENAME TO blocked_elsewhere")
            with pytest.raises(StorageUnavailable, match="no such table"):
                await storage.blocklist.list("alice")
            other.execute("ALTER TABLE blocked_elsewhere RENAME TO blocked_jids")
        finally:
            other.close()
        assert await storage.blocklist.list("alice") == []
        assert await storage.accounts.get_credentials("alice")
        assert db.loop_reader.fallbacks == 0
