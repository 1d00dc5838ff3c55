"""Layered storage on SQLite + three real redis-servers: the read path fills the tiers, writes
invalidate them on every node, nothing stale is read after a write returned, SQL down is survived."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import redis.asyncio as redis
from conftest import make_config, wait_for
from redis_servers import RedisServer, redis_servers

from nitro.accounts import change_password, create_account
from nitro.config import Config
from nitro.storage import codecs
from nitro.storage.errors import StorageUnavailable
from nitro.storage.layered import LayeredStorage, open_storage
from nitro.storage.models import ArchivePrefs, Roster, RosterItem
from nitro.storage.protocols import RosterStore

__all__ = ["redis_servers"]

FAST_RING = {"health_interval": 0.1, "health_timeout": 0.3, "failures_before_out": 2, "socket_timeout": 0.3}


def ring_config(tmp_path: Path, servers: list[RedisServer]) -> Config:
    return make_config(
        tmp_path,
        storage={"dsn": f"sqlite+aiosqlite:///{tmp_path}/nitro.db?timeout=0.3"},
        redis={"instances": [server.url for server in servers], **FAST_RING},
    )


@pytest.fixture
async def nodes(tmp_path: Path, redis_servers: list[RedisServer]) -> AsyncIterator[list[LayeredStorage]]:
    """Two nodes' storages: the same SQL database and ring, each with its own cache."""
    config = ring_config(tmp_path, redis_servers)
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(open_storage(config))
        second = await stack.enter_async_context(open_storage(config))
        await create_account(first, "alice", "secret")
        yield [first, second]


def item(jid: str, name: str | None = None) -> RosterItem:
    return RosterItem(jid=jid, name=name, subscription="both")


def ring_stats(node: LayeredStorage, kind: str) -> dict[str, int]:
    assert node.tiers.ring is not None
    return node.tiers.ring.stats.get(kind, {"hits": 0, "misses": 0, "errors": 0})


def cache_stats(node: LayeredStorage, kind: str) -> dict[str, int]:
    return node.tiers.cache.stats.get(kind, {"hits": 0, "misses": 0, "evictions": 0, "expired": 0})


async def test_the_read_path_fills_ring_and_cache(
    nodes: list[LayeredStorage], redis_servers: list[RedisServer]
) -> None:
    a, b = nodes
    await a.rosters.put("alice", item("bob@localhost", "Bob"))
    first = await a.rosters.get("alice")  # from SQL: fills the ring and a's cache
    assert [i.jid for i in first.items] == ["bob@localhost"]
    assert ring_stats(a, "roster")["misses"] == 1
    ring = a.tiers.ring
    assert ring is not None
    holder = ring.owner("alice")
    assert holder is not None
    stored = await holder.control.get(ring.keys.key("roster", 1, "alice"))
    assert isinstance(stored, bytes)  # present; redis-py types it bytes | str (no decode_responses here)
    assert codecs.ROSTER.decode(stored.partition(b"\n")[2]) == first

    assert await a.rosters.get("alice") == first  # from a's cache
    assert cache_stats(a, "roster")["hits"] == 1
    assert ring_stats(a, "roster")["misses"] == 1

    assert await b.rosters.get("alice") == first  # b: from the ring, then from its cache
    assert ring_stats(b, "roster") == {"hits": 1, "misses": 0, "errors": 0}
    assert await b.rosters.get("alice") == first
    assert cache_stats(b, "roster")["hits"] == 1


async def test_a_write_on_one_node_is_read_at_once_on_the_other(nodes: list[LayeredStorage]) -> None:
    a, b = nodes
    for node in nodes:  # both nodes hold the roster in their caches
        await node.rosters.get("alice")
        await node.rosters.get("alice")
    for round_ in range(20):
        writer, reader = (a, b) if round_ % 2 == 0 else (b, a)
        version = await writer.rosters.put("alice", item(f"c{round_}@localhost"))
        seen = await reader.rosters.get("alice")  # no sleep: the write returned, so it must be visible
        assert seen.version == version
        assert f"c{round_}@localhost" in {i.jid for i in seen.items}
        assert await reader.rosters.get_item("alice", f"c{round_}@localhost") is not None


async def test_every_cached_kind_is_invalidated_across_nodes(nodes: list[LayeredStorage]) -> None:
    a, b = nodes
    assert await b.vcards.get("alice") is None
    assert await b.blocklist.list("alice") == []
    assert await b.private.get("alice", "{storage:bookmarks}storage") is None
    assert await b.archive.get_prefs("alice") is None
    old = await b.accounts.get_credentials("alice")
    await a.vcards.set("alice", b"<vCard xmlns='vcard-temp'/>")
    await a.blocklist.add("alice", ["spam@example.com"])
    await a.private.set("alice", "{storage:bookmarks}storage", b"<storage xmlns='storage:bookmarks'/>")
    await a.archive.set_prefs("alice", ArchivePrefs(default="never"))
    await create_account(a, "bob", "secret")
    assert await b.vcards.get("alice") == b"<vCard xmlns='vcard-temp'/>"
    assert await b.blocklist.list("alice") == ["spam@example.com"]
    assert await b.private.get("alice", "{storage:bookmarks}storage") is not None
    assert await b.archive.get_prefs("alice") == ArchivePrefs(default="never")
    assert await b.accounts.exists("bob")
    assert await change_password(a, "alice", "another")
    assert await b.accounts.get_credentials("alice") != old
    assert await a.accounts.delete("alice")
    assert await b.accounts.get_credentials("alice") is None
    assert await b.rosters.get("alice") == Roster(version=0, items=())
    assert await b.vcards.get("alice") is None


async def test_a_slow_reader_never_stores_an_old_value_over_a_newer_write(
    nodes: list[LayeredStorage],
) -> None:
    a, b = nodes
    sql_rosters: RosterStore = b.rosters._sql  # type: ignore[attr-defined]  # the SQL tier under the cache
    await a.rosters.put("alice", item("old@localhost"))

    async def slow_load() -> Roster:
        old = await sql_rosters.get("alice")  # the reader got the old roster from SQL …
        await a.rosters.put("alice", item("new@localhost"))  # … then a write lands and returns
        return old

    stale = await b.tiers.read(codecs.ROSTER, "alice", slow_load)
    assert {i.jid for i in stale.items} == {"old@localhost"}  # that read itself began before the write
    for node in (a, b, a, b):  # but neither the ring nor b's cache kept it
        assert {i.jid for i in (await node.rosters.get("alice")).items} == {"old@localhost", "new@localhost"}


@pytest.mark.fault
async def test_an_instance_killed_sends_its_owners_reads_to_sql(
    nodes: list[LayeredStorage], redis_servers: list[RedisServer]
) -> None:
    a, b = nodes
    await a.rosters.get("alice")
    ring = a.tiers.ring
    assert ring is not None
    holder = ring.owner("alice")
    assert holder is not None
    server = next(s for s in redis_servers if s.url == holder.url)
    server.kill()
    version = await b.rosters.put("alice", item("during@localhost"))  # SQL; the dead instance goes out
    for node in (a, b):
        roster = await node.rosters.get("alice")
        assert roster.version == version
    await wait_for(lambda: not holder.live, timeout=10)
    assert ring.owner("alice") is not holder
    assert (await a.rosters.get("alice")).version == version


@pytest.mark.fault
async def test_a_paused_instance_serves_nothing_stale_when_it_resumes(
    nodes: list[LayeredStorage], redis_servers: list[RedisServer]
) -> None:
    a, b = nodes
    for node in nodes:
        await node.rosters.get("alice")
    ring = a.tiers.ring
    assert ring is not None
    holder = ring.owner("alice")
    assert holder is not None
    server = next(s for s in redis_servers if s.url == holder.url)
    server.signal(signal.SIGSTOP)
    try:
        version = await b.rosters.put("alice", item("while-paused@localhost"))
        assert (await a.rosters.get("alice")).version == version
    finally:
        server.signal(signal.SIGCONT)
    for _ in range(20):  # while it rejoins (flushed), and after
        assert (await a.rosters.get("alice")).version == version
        assert (await b.rosters.get("alice")).version == version
        await asyncio.sleep(0.05)
    await wait_for(lambda: all(i.live for i in ring.instances), timeout=10)
    assert (await a.rosters.get("alice")).version == version


@pytest.fixture
def sql_lock(tmp_path: Path) -> Iterator[list[sqlite3.Connection]]:
    """SQL made unreachable on demand: another connection holding SQLite's exclusive lock."""
    held: list[sqlite3.Connection] = []
    yield held
    for connection in held:
        connection.close()


async def lock_sql(tmp_path: Path, held: list[sqlite3.Connection], nodes: list[LayeredStorage]) -> None:
    """Every node loses its SQL connections (as when a database server restarts), and another process
    holds SQLite's exclusive lock: no node can read or write SQL until it is released."""
    for node in nodes:
        await node.accounts._sql._db.dispose()  # type: ignore[attr-defined]  # the SQL tier's pool
    locker = sqlite3.connect(tmp_path / "nitro.db", isolation_level=None, timeout=5)
    locker.execute("PRAGMA locking_mode=EXCLUSIVE")
    locker.execute("BEGIN EXCLUSIVE")
    held.append(locker)


@pytest.mark.fault
async def test_sql_down_serves_fresh_cached_reads_and_refuses_writes(
    nodes: list[LayeredStorage], tmp_path: Path, sql_lock: list[sqlite3.Connection]
) -> None:
    a, b = nodes
    version = await a.rosters.put("alice", item("bob@localhost"))
    await a.rosters.get("alice")  # in a's cache and the ring; b has nothing local
    credentials = await a.accounts.get_credentials("alice")
    await lock_sql(tmp_path, sql_lock, nodes)
    assert (await a.rosters.get("alice")).version == version  # a's cache, validated by the ring
    assert (await b.rosters.get("alice")).version == version  # the ring
    assert await b.accounts.get_credentials("alice") == credentials
    with pytest.raises(StorageUnavailable):
        await b.offline.list("alice")  # not cached: SQL only
    with pytest.raises(StorageUnavailable):
        await a.vcards.get("alice")  # never read, so nowhere cached
    with pytest.raises(StorageUnavailable):
        await b.rosters.put("alice", item("carol@localhost"))  # a write is refused, not acknowledged
    # A failed write may or may not have committed: the cached copies are dropped, not trusted.
    with pytest.raises(StorageUnavailable):
        await a.rosters.get("alice")
    sql_lock.pop().close()  # SQL is back: everything works again without a restart
    assert (await a.rosters.get("alice")).version == version  # the refused write left no trace
    new_version = await b.rosters.put("alice", item("carol@localhost"))
    assert new_version == version + 1
    assert {i.jid for i in (await a.rosters.get("alice")).items} == {"bob@localhost", "carol@localhost"}


@pytest.mark.fault
async def test_sql_and_the_owners_instance_down_is_an_error_not_a_stale_read(
    nodes: list[LayeredStorage],
    redis_servers: list[RedisServer],
    tmp_path: Path,
    sql_lock: list[sqlite3.Connection],
) -> None:
    a, _ = nodes
    await a.rosters.get("alice")
    ring = a.tiers.ring
    assert ring is not None
    holder = ring.owner("alice")
    assert holder is not None
    next(s for s in redis_servers if s.url == holder.url).kill()
    await wait_for(lambda: not holder.live, timeout=10)
    await lock_sql(tmp_path, sql_lock, nodes)
    with pytest.raises(StorageUnavailable):
        await a.rosters.get("alice")  # the ring's new owner has nothing, SQL is locked: no guess


async def test_a_ring_value_of_another_shape_is_a_miss(nodes: list[LayeredStorage]) -> None:
    a, b = nodes
    await a.rosters.put("alice", item("bob@localhost"))
    await a.rosters.get("alice")
    ring = a.tiers.ring
    assert ring is not None
    holder = ring.owner("alice")
    assert holder is not None
    key = ring.keys.key("roster", 1, "alice")
    stored = await holder.control.get(key)
    assert isinstance(stored, bytes)  # present; redis-py types it bytes | str (no decode_responses here)
    generation = stored.partition(b"\n")[0]
    client = redis.Redis.from_url(holder.url)
    try:
        await client.set(key, generation + b"\n\x09{garbage")
    finally:
        await client.aclose()
    assert [i.jid for i in (await b.rosters.get("alice")).items] == ["bob@localhost"]
