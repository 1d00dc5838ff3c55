"""A cluster of `nitro serve` processes (integration/cluster.py: a ring of redis-servers, a nats-server
of its own, a shared SQLite file) driven by slixmpp bots: a node killed with SIGKILL mid-conversation."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from integration.bots import Bot, close, login
from integration.cluster import LocalCluster
from integration.nats_servers import NATS_SERVER
from integration.populate import PASSWORD as BOT_PASSWORD
from integration.populate import populate
from integration.redis_servers import REDIS_SERVER
from integration.scenarios import SCENARIOS
from nitro.accounts import create_account
from nitro.storage.models import RosterItem
from nitro.storage.sql import open_sql_storage

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.fault]

PASSWORD = "correct horse battery"
TTL = 3.0


@pytest.fixture
async def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[LocalCluster]:
    """Two nodes (or as parametrized), a ring of three redis-servers, NATS and SQLite."""
    if NATS_SERVER is None or REDIS_SERVER is None:
        pytest.skip("nats-server and redis-server are needed")
    local = LocalCluster(
        tmp_path / "cluster",
        nodes_count=getattr(request, "param", 2),
        redis_count=3,
        database="sqlite",
        heartbeat_ttl=TTL,
    )
    await asyncio.to_thread(local.start)
    try:
        yield local
    finally:
        await asyncio.to_thread(local.stop)


async def status_of(config: Path) -> str:
    """`nitro status` against a node's admin socket, as an operator runs it."""
    await asyncio.sleep(TTL / 6 + 0.5)  # the session counts in the heartbeats are refreshed every ttl / 6
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nitro", "--config", str(config), "status", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    return out.decode()


async def until(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_a_killed_node_s_users_go_offline_and_their_messages_wait_in_offline_storage(
    cluster: LocalCluster,
) -> None:
    async with open_sql_storage(cluster.dsn) as storage:
        for name in ("alice", "bob"):
            await create_account(storage, name, PASSWORD)
        await storage.rosters.put("alice", RosterItem("bob@localhost", subscription="both"))
        await storage.rosters.put("bob", RosterItem("alice@localhost", subscription="both"))
    cert = cluster.directory / "tls" / "cert.pem"
    a, b = cluster.nodes
    bots: list[Bot] = []
    try:
        alice = await login("alice@localhost/phone", PASSWORD, a.c2s_port, cert)
        bots.append(alice)
        bob = await login("bob@localhost/laptop", PASSWORD, b.c2s_port, cert)
        bots.append(bob)
        await until(lambda: ("bob@localhost/laptop", "available") in alice.presences)
        alice.say("bob@localhost", "before")
        await until(lambda: bob.messages == ["before"])
        status = await status_of(a.config)  # `nitro status` lists the live nodes with their sessions
        assert "cluster node node1: 1 sessions" in status
        assert "cluster node node2: 1 sessions" in status

        b.kill()  # SIGKILL: no unavailable presence, no clean-up; bob's client just loses its socket
        killed = time.monotonic()
        for index in range(5):  # mid-conversation: sent while b's heartbeat is still live, and after
            alice.say("bob@localhost", f"meanwhile {index}")
            await asyncio.sleep(0.3)
        await until(lambda: ("bob@localhost/laptop", "unavailable") in alice.presences, TTL * 4)
        assert time.monotonic() - killed < TTL + 3  # within the heartbeat TTL (plus one check and a ping)
        alice.say("bob@localhost", "after")

        again = await login("bob@localhost/tablet", PASSWORD, a.c2s_port, cert)  # on the surviving node
        bots.append(again)
        expected = [f"meanwhile {index}" for index in range(5)] + ["after"]
        await until(lambda: again.messages == expected)  # from offline storage, in order, once each
    finally:
        await close(*bots)


@pytest.mark.parametrize("cluster", [3], indirect=True)
async def test_populated_three_node_cluster_runs_the_chat_and_presence_scenarios(
    cluster: LocalCluster,
) -> None:
    seconds = await populate(cluster.dsn, users=300, roster=3)
    assert seconds < 60  # bounded, not a speed claim: integration/bench_cluster.py measures
    state = {**cluster.state(), "users": 300, "roster": 3}
    assert "12 users on 3 nodes" in await SCENARIOS["presence"](state)
    assert "between 20 users on 3 nodes" in await SCENARIOS["chat"](state)


async def test_a_node_restarted_at_once_takes_its_name_back_and_starts_clean(cluster: LocalCluster) -> None:
    async with open_sql_storage(cluster.dsn) as storage:
        for name in ("alice", "bob"):
            await create_account(storage, name, PASSWORD)
        await storage.rosters.put("alice", RosterItem("bob@localhost", subscription="both"))
        await storage.rosters.put("bob", RosterItem("alice@localhost", subscription="both"))
    cert = cluster.directory / "tls" / "cert.pem"
    a, b = cluster.nodes
    bots: list[Bot] = []
    try:
        alice = await login("alice@localhost/phone", PASSWORD, a.c2s_port, cert)
        bots.append(alice)
        bob = await login("bob@localhost/laptop", PASSWORD, b.c2s_port, cert)
        bots.append(bob)
        await until(lambda: ("bob@localhost/laptop", "available") in alice.presences)
        b.kill()
        b.start()  # the same name while its old heartbeat is still in the ring: no live holder answers
        await asyncio.to_thread(b.wait_ready)
        # node1 hears the new run and drops what the old one held: bob goes offline for alice
        await until(lambda: ("bob@localhost/laptop", "unavailable") in alice.presences, TTL * 2)
        back = await login("bob@localhost/laptop", PASSWORD, b.c2s_port, cert)
        bots.append(back)
        await until(lambda: alice.presences.count(("bob@localhost/laptop", "available")) == 2)
        alice.say("bob@localhost/laptop", "welcome back")
        await until(lambda: back.messages == ["welcome back"])
    finally:
        await close(*bots)


@pytest.mark.parametrize("cluster", [1], indirect=True)
async def test_two_workers_of_one_node_share_its_port_and_route_to_each_other(cluster: LocalCluster) -> None:
    node = cluster.nodes[0]
    node.stop()  # again, with [server] workers = 2
    cluster.workers = 2
    node.config.write_text(cluster.node_config(node))
    node.start()
    await asyncio.to_thread(node.wait_ready)
    await populate(cluster.dsn, users=16, roster=0)
    for _ in range(20):  # worker 1 is up (it starts once worker 0 serves)
        if "node1-w1" in await status_of(node.config):
            break
    cert = cluster.directory / "tls" / "cert.pem"
    bots: list[Bot] = []
    try:
        for index in range(16):  # the kernel spreads connections to the one port over both processes
            bots.append(await login(f"user{index}@localhost/b", BOT_PASSWORD, node.c2s_port, cert))
        await asyncio.sleep(1.0)
        for index, bot in enumerate(bots):
            bot.say(f"user{(index + 1) % 16}@localhost/b", f"from {index}")
        await until(lambda: all(len(bot.messages) == 1 for bot in bots))
        assert [bot.messages for bot in bots] == [[f"from {(index - 1) % 16}"] for index in range(16)]
        status = await status_of(node.config)
        counts = re.findall(r"cluster node node1-w(\d): (\d+) sessions", status)
        assert sorted(worker for worker, _ in counts) == ["0", "1"]
        assert sum(int(n) for _, n in counts) == 16
        assert all(int(n) > 0 for _, n in counts)  # both took connections (all 16 on one: p = 2**-15)
    finally:
        await close(*bots)
