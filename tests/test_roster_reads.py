"""All of a user's sessions coming online at once read the roster once (issue 11 item 2), and a write is
never hidden by a read that began before it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import make_config

from nitro.accounts import create_account
from nitro.storage.layered import open_storage
from nitro.storage.models import RosterItem
from nitro.storage.timed import timed_storage


async def test_concurrent_reads_of_one_roster_are_one_sql_read_and_writes_start_afresh(
    tmp_path: Path,
) -> None:
    calls: list[tuple[str, str]] = []

    def record(repository: str, operation: str, _seconds: float) -> None:
        calls.append((repository, operation))

    config = make_config(tmp_path)
    async with open_storage(config, wrap_sql=lambda sql: timed_storage(sql, record)) as storage:
        await create_account(storage, "alice", "secret password", iterations=4096)
        await storage.rosters.put("alice", RosterItem(jid="bob@localhost", subscription="both"))
        calls.clear()

        rosters = await asyncio.gather(*(storage.rosters.get("alice") for _ in range(50)))
        assert {roster.version for roster in rosters} == {rosters[0].version}
        assert calls.count(("rosters", "get")) == 1  # fifty sessions, one read

        await storage.rosters.put("alice", RosterItem(jid="carol@localhost", subscription="to"))
        after = await storage.rosters.get("alice")
        assert "carol@localhost" in [item.jid for item in after.items]
        assert calls.count(("rosters", "get")) == 2  # the read after the write is a new one
