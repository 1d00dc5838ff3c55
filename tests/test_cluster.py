"""Two Nitro servers sharing SQL and a ring of three real redis-servers, driven by slixmpp clients:
a Redis instance killed mid-conversation loses nothing, one restarted from a stale snapshot serves
nothing stale, a roster change through one node (or a password change by `nitro user passwd`) is seen
at once through the other, and SQL down gives errors, never silence or a lost acknowledged write."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import slixmpp
from conftest import Clients, make_config, result_of
from redis_servers import RedisServer, redis_servers
from slixmpp.exceptions import IqError
from test_cli import nitro

from nitro.config import Config
from nitro.server import Server, running_server

__all__ = ["redis_servers"]

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.fault]

RING = {"health_interval": 0.2, "health_timeout": 0.3, "failures_before_out": 2, "socket_timeout": 0.3}


def node_config(tmp_path: Path, servers: list[RedisServer], **ring: float) -> Config:
    """One node: its own ports, the shared SQLite file and certificate, the shared ring."""
    redis = {"instances": [s.url for s in servers], "prefix": "cluster", **RING, **ring}
    return make_config(tmp_path, redis=redis)


@pytest.fixture
async def cluster(tmp_path: Path, redis_servers: list[RedisServer]) -> AsyncIterator[list[Clients]]:
    """Two servers (separate caches), each with its pool of clients."""
    async with AsyncExitStack() as stack:
        pools = []
        for _ in range(2):
            server = await stack.enter_async_context(running_server(node_config(tmp_path, redis_servers)))
            pool = Clients(server)
            stack.push_async_callback(pool.close_all)
            pools.append(pool)
        yield pools


def server_of(redis_servers: list[RedisServer], server: Server, owner: str) -> RedisServer:
    assert server.tiers is not None
    assert server.tiers.ring is not None
    holder = server.tiers.ring.owner(owner)
    assert holder is not None
    return next(s for s in redis_servers if s.url == holder.url)


def watch_disconnects(*clients: slixmpp.ClientXMPP) -> list[str]:
    dropped: list[str] = []
    for client in clients:
        client.add_event_handler("disconnected", lambda _event, c=client: dropped.append(str(c.boundjid)))
    return dropped


async def roster_jids(client: slixmpp.ClientXMPP) -> set[str]:
    iq = client.Iq()
    iq["type"] = "get"
    iq.enable("roster")
    result = await iq.send(timeout=10)
    return set(result["roster"]["items"])


async def test_killing_a_redis_mid_conversation_loses_no_message_and_no_client(
    cluster: list[Clients], redis_servers: list[RedisServer]
) -> None:
    a, b = cluster
    alice_jid, bob_jid = await a.user("alice"), await a.user("bob")
    alice = await a.login(alice_jid)
    bob = await b.login(bob_jid)  # on the other node's listener, same SQL and ring
    bob_on_a = await a.login(bob_jid)  # cross-node routing is a later issue: bob also on alice's node
    dropped = watch_disconnects(alice, bob, bob_on_a)
    received: list[str] = []
    bob_on_a.add_event_handler("message", lambda msg: received.append(msg["body"]))
    victim = server_of(redis_servers, a.server, "bob")

    total = 60
    for index in range(total):
        if index == total // 2:
            victim.kill()  # mid-conversation: bob's (and perhaps alice's) cached data lived there
        alice.send_message(mto=bob_on_a.boundjid, mbody=f"m{index}", mtype="chat")
        await asyncio.sleep(0.02)
    for _ in range(500):  # bounded wait for the last messages
        if len(received) >= total:
            break
        await asyncio.sleep(0.02)
    assert received == [f"m{index}" for index in range(total)]
    assert dropped == []

    for pool, name in ((a, "carol"), (b, "dave"), (b, "alice")):  # logins keep working on both nodes
        jid = await pool.user(name) if name != "alice" else alice_jid
        client = await pool.login(jid)
        assert client.authenticated
    assert await roster_jids(alice) == set()
    assert dropped == []


async def test_a_redis_restarted_from_a_stale_snapshot_serves_nothing_stale(
    cluster: list[Clients], redis_servers: list[RedisServer]
) -> None:
    a, b = cluster
    alice_jid = await a.user("alice")
    alice_a = await a.login(alice_jid)
    alice_b = await b.login(alice_jid)
    await result_of(alice_a.update_roster(slixmpp.JID("old@localhost"), name="Old"))
    assert await roster_jids(alice_b) == {"old@localhost"}  # now cached in the ring and b's cache
    assert await roster_jids(alice_a) == {"old@localhost"}
    holder = server_of(redis_servers, a.server, "alice")
    holder.snapshot()  # the instance's keys as they are now
    await result_of(
        alice_b.update_roster(slixmpp.JID("new@localhost"), name="New")
    )  # acknowledged: SQL has it
    holder.kill()
    holder.start()  # comes back with the snapshot: the old roster under the old epoch
    for _ in range(30):  # while it is fenced, flushed and readmitted, and after
        assert await roster_jids(alice_a) == {"old@localhost", "new@localhost"}
        assert await roster_jids(alice_b) == {"old@localhost", "new@localhost"}
        await asyncio.sleep(0.05)
    for server in (a.server, b.server):
        assert server.tiers is not None
        assert server.tiers.ring is not None
        assert all(instance.live for instance in server.tiers.ring.instances)
    assert await roster_jids(alice_a) == {"old@localhost", "new@localhost"}


async def test_a_roster_change_through_one_node_is_seen_at_once_through_the_other(
    cluster: list[Clients],
) -> None:
    a, b = cluster
    alice_jid = await a.user("alice")
    on_a = await a.login(alice_jid)
    on_b = await b.login(alice_jid)
    assert await roster_jids(on_b) == set()  # cached on b (and in the ring)
    for index in range(10):
        writer, reader = (on_a, on_b) if index % 2 == 0 else (on_b, on_a)
        await result_of(
            writer.update_roster(slixmpp.JID(f"c{index}@localhost"), name=f"C{index}")
        )  # waits for the IQ result
        assert f"c{index}@localhost" in await roster_jids(reader)  # no delay: the write was acknowledged
    removed: Any = on_a.Iq()
    removed["type"] = "set"
    removed["roster"]["items"] = {"c0@localhost": {"subscription": "remove"}}
    await removed.send(timeout=10)
    assert "c0@localhost" not in await roster_jids(on_b)
    stats = b.server.tiers.ring.stats if b.server.tiers and b.server.tiers.ring else {}
    assert stats["roster"]["hits"] + stats["roster"]["misses"] > 0


async def test_sql_down_under_traffic_gives_errors_not_silence_and_loses_no_acknowledged_write(
    tmp_path: Path, redis_servers: list[RedisServer]
) -> None:
    config = make_config(
        tmp_path,
        storage={"dsn": f"sqlite+aiosqlite:///{tmp_path}/nitro.db?timeout=0.3"},
        redis={"instances": [s.url for s in redis_servers], **RING},
    )
    async with running_server(config) as server:
        pool = Clients(server)
        try:
            alice_jid, bob_jid = await pool.user("alice"), await pool.user("bob")
            alice = await pool.login(alice_jid)
            await (await pool.login(bob_jid)).disconnect(wait=1)  # bob's credentials are now cached
            acknowledged: list[str] = []
            refused: list[tuple[str, str, str]] = []
            locker: sqlite3.Connection | None = None
            for index in range(24):
                if index == 8:  # SQL goes away: its connections drop, another process holds the lock
                    await server.storage.accounts._sql._db.dispose()  # type: ignore[attr-defined]  # SQL pool
                    locker = sqlite3.connect(tmp_path / "nitro.db", isolation_level=None, timeout=5)
                    locker.execute("PRAGMA locking_mode=EXCLUSIVE")
                    locker.execute("BEGIN EXCLUSIVE")
                    bob = await pool.login(bob_jid)  # logins of cached accounts still work
                    assert bob.authenticated
                if index == 16 and locker is not None:
                    locker.close()  # SQL is back; nothing restarted
                    locker = None
                contact = f"c{index}@localhost"
                try:
                    await result_of(
                        alice.update_roster(slixmpp.JID(contact), timeout=10)
                    )  # an answer, never silence
                    acknowledged.append(contact)
                except IqError as error:
                    refused.append((contact, error.iq["error"]["type"], error.iq["error"]["condition"]))
            assert refused  # the outage was felt …
            assert {(kind, condition) for _, kind, condition in refused} == {
                ("wait", "internal-server-error")
            }
            assert len(acknowledged) >= 16  # … only while it lasted
            assert await roster_jids(alice) == set(acknowledged)  # every acknowledged write is there
        finally:
            await pool.close_all()


async def test_nitro_user_passwd_in_another_process_is_seen_at_once_by_a_ring_server(
    cluster: list[Clients], tmp_path: Path, redis_servers: list[RedisServer]
) -> None:
    a, _ = cluster
    alice_jid = await a.user("alice")
    await (await a.login(alice_jid)).disconnect(wait=1)  # the old credentials are cached now
    instances = ", ".join(f'"{s.url}"' for s in redis_servers)
    config = tmp_path / "cli.toml"
    config.write_text(
        f'[storage]\ndsn = "sqlite+aiosqlite:///{tmp_path}/nitro.db"\n'
        f'[redis]\ninstances = [{instances}]\nprefix = "cluster"\n'
    )
    done = await asyncio.to_thread(
        nitro, config, "user", "passwd", "alice", "--password-stdin", stdin="a new password\n"
    )
    assert done.returncode == 0, done.stderr
    client = await a.login(alice_jid, "a new password")  # at once: no TTL to wait out
    assert client.authenticated
    with pytest.raises(AssertionError, match="authentication failed"):
        await a.login(alice_jid)  # the old password is refused
