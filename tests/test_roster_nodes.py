"""Roster and subscription updates that two nodes make at once are serialised in the store (a transaction
holding the account's row lock), not by in-process locks: two storages on one database — two nodes —
changing one item concurrently lose no update, on SQLite and on MariaDB."""

from __future__ import annotations

import asyncio
import dataclasses

from sqlbackends import SqlBackend

from nitro.storage import RosterItem
from nitro.storage.sql import open_sql_storage

ROUNDS = 25


def bump(field: str) -> object:
    """A change that reads the committed item and increments one counter kept in its groups."""

    def change(before: RosterItem | None) -> RosterItem:
        item = before or RosterItem("bob@localhost", groups=("a=0", "b=0"))
        counters = dict(group.split("=") for group in item.groups)
        counters[field] = str(int(counters[field]) + 1)
        return dataclasses.replace(item, groups=tuple(f"{k}={v}" for k, v in sorted(counters.items())))

    return change


async def test_two_nodes_changing_one_roster_item_at_once_lose_no_update(sql_backend: SqlBackend) -> None:
    async with open_sql_storage(sql_backend.dsn) as node_a, open_sql_storage(sql_backend.dsn) as node_b:
        await node_a.accounts.create("alice", {})

        async def node(storage: object, field: str) -> None:
            for _ in range(ROUNDS):
                await storage.rosters.update("alice", "bob@localhost", bump(field))  # type: ignore[attr-defined]

        await asyncio.gather(node(node_a, "a"), node(node_b, "b"), node(node_a, "a"), node(node_b, "b"))
        item = await node_b.rosters.get_item("alice", "bob@localhost")
        assert item is not None
        assert item.groups == (f"a={2 * ROUNDS}", f"b={2 * ROUNDS}")  # every increment of both nodes
        assert (await node_a.rosters.get("alice")).version == 4 * ROUNDS  # one bump per change


async def test_an_update_that_changes_nothing_writes_nothing(sql_backend: SqlBackend) -> None:
    async with open_sql_storage(sql_backend.dsn) as storage:
        await storage.accounts.create("alice", {})
        before, after, version = await storage.rosters.update("alice", "bob@localhost", lambda item: item)
        assert (before, after, version) == (None, None, None)
        await storage.rosters.update("alice", "bob@localhost", lambda _: RosterItem("bob@localhost"))
        _, _, version = await storage.rosters.update("alice", "bob@localhost", lambda _: None)  # removes it
        assert version == 2
        assert await storage.rosters.get_item("alice", "bob@localhost") is None
