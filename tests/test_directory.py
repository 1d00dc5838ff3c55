"""The session directory: in memory on one node, and in the real Redis ring shared by two nodes
(records seen across nodes, re-published when their instance dies, expired when their node dies)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from conftest import Clients, make_config, wait_for
from redis_servers import RedisServer, redis_servers

from nitro.config import RedisInstance, RedisSection
from nitro.core.directory import SessionDirectory
from nitro.server import Server, running_server
from nitro.storage.ring.ring import Ring
from nitro.xmpp.jid import JID

__all__ = ["redis_servers"]

ALICE_PHONE = JID.parse("alice@localhost/phone")
ALICE = ALICE_PHONE.bare


def ring_settings(servers: list[RedisServer]) -> RedisSection:
    return RedisSection(
        instances=tuple(RedisInstance(server.url) for server in servers),
        health_interval=0.1,
        health_timeout=0.3,
        socket_timeout=0.3,
        session_ttl=1.5,
    )


@pytest.fixture
async def rings(redis_servers: list[RedisServer]) -> AsyncIterator[list[Ring]]:
    """Two nodes' views of the same three instances."""
    async with AsyncExitStack() as stack:
        started = []
        for _ in range(2):
            ring = Ring(ring_settings(redis_servers))
            await ring.start()
            stack.push_async_callback(ring.close)
            started.append(ring)
        yield started


async def test_records_are_seen_by_the_other_node_and_removed(rings: list[Ring]) -> None:
    one = SessionDirectory(rings[0], "node-one", ttl=30)
    two = SessionDirectory(rings[1], "node-two", ttl=30)
    await one.put(ALICE_PHONE, None)
    await two.put(ALICE.with_resource("laptop"), b"<presence/>", priority=5)
    seen = await two.resources(ALICE)
    assert set(seen) == {"phone", "laptop"}
    assert seen["phone"].node == "node-one"
    assert seen["phone"].presence is None
    assert seen["laptop"].node == "node-two"
    assert seen["laptop"].priority == 5
    await one.put(ALICE_PHONE, b"<presence><show>away</show></presence>", priority=1)
    assert (await two.resources(ALICE))["phone"].presence == b"<presence><show>away</show></presence>"
    await one.remove(ALICE_PHONE)
    assert set(await two.resources(ALICE)) == {"laptop"}
    assert set(await one.resources(ALICE)) == {"laptop"}


@pytest.mark.fault
async def test_records_lost_with_an_instance_are_republished_by_their_owner(
    rings: list[Ring], redis_servers: list[RedisServer]
) -> None:
    one = SessionDirectory(rings[0], "node-one", ttl=30)  # refresh every 10 s: only a ring change helps
    two = SessionDirectory(rings[1], "node-two", ttl=30)
    runner = asyncio.create_task(one.run())
    try:
        await one.put(ALICE_PHONE, b"<presence/>")
        holder = rings[0].owner(str(ALICE))
        assert holder is not None
        next(s for s in redis_servers if s.url == holder.url).kill()
        await wait_for(lambda: not holder.live and rings[1].owner(str(ALICE)) is not None, timeout=10)
        await wait_for(lambda: one.republished >= 2, timeout=10)

        async def seen_by_two() -> bool:
            return "phone" in await two.resources(ALICE)

        for _ in range(100):  # bounded: until node two maps alice to the new instance too
            if await seen_by_two():
                break
            await asyncio.sleep(0.05)
        assert await seen_by_two()
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_records_of_a_dead_node_expire(rings: list[Ring]) -> None:
    one = SessionDirectory(rings[0], "node-one", ttl=1.5)
    two = SessionDirectory(rings[1], "node-two", ttl=1.5)
    runner = asyncio.create_task(one.run())
    await one.put(ALICE_PHONE, None)
    await wait_for(lambda: one.republished >= 1)
    assert await two.node_alive("node-one")
    assert "phone" in await two.resources(ALICE)
    runner.cancel()  # leaving cleanly forgets its records at once
    await asyncio.gather(runner, return_exceptions=True)
    assert "phone" not in await two.resources(ALICE)
    assert not await two.node_alive("node-one")

    crashed = SessionDirectory(rings[0], "node-three", ttl=1.5)
    await crashed.put(ALICE_PHONE, None)  # then never refreshed, never removed: a crash
    assert "phone" in await two.resources(ALICE)
    for _ in range(100):
        if "phone" not in await two.resources(ALICE):
            break
        await asyncio.sleep(0.05)
    assert "phone" not in await two.resources(ALICE)


async def test_without_a_ring_the_directory_is_in_memory(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path, redis={"instances": []})) as server:
        clients = Clients(server)
        try:
            await in_memory_directory(server, clients)
        finally:
            await clients.close_all()


async def in_memory_directory(server: Server, clients: Clients) -> None:
    directory = server.directory
    assert directory is not None
    assert directory.ring is None
    changes: list[tuple[JID, bytes | None]] = []
    directory.on_change.append(
        lambda jid, record: changes.append((jid, None if record is None else record.presence))
    )
    jid = await clients.user("alice")
    client = await clients.login(jid)
    bound = JID.parse(str(client.boundjid))
    await wait_for(lambda: any(j == bound and p is not None for j, p in changes))
    records = await directory.resources(bound.bare)
    assert list(records) == [bound.resource]
    assert records[bound.resource or ""].presence is not None
    client.send_presence(pshow="away")
    await wait_for(lambda: b"away" in (changes[-1][1] or b""))
    client.disconnect()
    await wait_for(lambda: changes[-1] == (bound, None))
    assert await directory.resources(bound.bare) == {}


async def test_a_server_with_the_ring_writes_its_sessions_there(
    tmp_path: Path, redis_servers: list[RedisServer]
) -> None:
    config = make_config(
        tmp_path,
        redis={
            "instances": [s.url for s in redis_servers],
            "prefix": "nitro",
            "health_interval": 0.1,
            "session_ttl": 5.0,
        },
    )
    async with running_server(config) as server:
        pool = Clients(server)
        try:
            client = await pool.login(await pool.user("alice"))
            bound = JID.parse(str(client.boundjid))
            ring = Ring(ring_settings(redis_servers))
            await ring.start()
            try:
                other = SessionDirectory(ring, "observer", ttl=5)

                async def presence() -> bytes | None:
                    record = (await other.resources(bound.bare)).get(bound.resource or "")
                    return None if record is None else record.presence

                for _ in range(100):
                    if await presence() is not None:
                        break
                    await asyncio.sleep(0.05)
                assert await presence() is not None
                assert server.directory is not None
                assert (await other.resources(bound.bare))[
                    bound.resource or ""
                ].node == server.directory.node_id
            finally:
                await ring.close()
        finally:
            await pool.close_all()


async def test_garbage_in_the_ring_is_skipped_and_does_not_take_the_instance_out(rings: list[Ring]) -> None:
    one = SessionDirectory(rings[0], "node-one", ttl=30)
    two = SessionDirectory(rings[1], "node-two", ttl=30)
    await one.put(ALICE_PHONE, None)
    holder = rings[1].owner(str(ALICE))
    assert holder is not None
    entry = rings[1].keys.sessions(str(ALICE))
    await holder.control.hset(entry, "tablet", b"\xff not json")
    assert set(await two.resources(ALICE)) == {"phone"}  # the unreadable record is ignored
    await holder.control.delete(entry)
    await holder.control.set(entry, b"a string, not a hash")
    assert await two.resources(ALICE) == {}  # WRONGTYPE: nothing known from the ring …
    assert holder.live  # … and the instance is still trusted: it answered
    assert set(await one.resources(ALICE)) == {"phone"}  # a node always knows its own sessions
