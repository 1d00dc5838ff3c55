"""`nitro upgrade` of a cluster node (real `nitro serve` processes, a nats-server and redis-servers of the
test's own, slixmpp clients): the successor takes the node's name over, nothing is lost or duplicated, and
the contact on the other node sees no unavailable presence."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from upgrade_node import Reconnecting

from integration.bots import Bot, close, login
from integration.cluster import LocalCluster
from integration.nats_servers import NATS_SERVER
from integration.redis_servers import REDIS_SERVER
from nitro.accounts import create_account
from nitro.ops.pidfile import read_pid
from nitro.storage.models import RosterItem
from nitro.storage.sql import open_sql_storage

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

PASSWORD = "correct horse battery"


@pytest.fixture
async def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[LocalCluster]:
    """Two nodes; `extra` TOML for both as the parameter."""
    if NATS_SERVER is None or REDIS_SERVER is None:
        pytest.skip("nats-server and redis-server are needed")
    local = LocalCluster(
        tmp_path / "cluster",
        nodes_count=2,
        redis_count=1,
        database="sqlite",
        heartbeat_ttl=3.0,
        extra=getattr(request, "param", ""),
    )
    await asyncio.to_thread(local.start)
    try:
        yield local
    finally:
        for node in local.nodes:  # the serving generation (the PID file), not only the first process
            pid = read_pid(node.directory / "nitro.pid")
            if pid is not None and pid != node.pid:
                if node.process is not None:  # the old process exited after the upgrade: reaped
                    await asyncio.to_thread(node.process.wait, 15)
                node.pid, node.process = pid, None
        await asyncio.to_thread(local.stop)


async def until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def nitro(config: Path, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nitro",
        "--config",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_an_upgraded_node_keeps_its_name_and_its_users_chat_on(cluster: LocalCluster) -> None:
    async with open_sql_storage(cluster.dsn) as storage:
        for name in ("alice", "bob"):
            await create_account(storage, name, PASSWORD)
        await storage.rosters.put("alice", RosterItem("bob@localhost", subscription="both"))
        await storage.rosters.put("bob", RosterItem("alice@localhost", subscription="both"))
    cert = cluster.directory / "tls" / "cert.pem"
    a, b = cluster.nodes
    old = a.pid
    bots: list[Bot] = []
    try:
        alice = await login("alice@localhost/phone", PASSWORD, a.c2s_port, cert, plugins=("xep_0198",))
        bots.append(alice)
        watch = Reconnecting(alice, a.c2s_port)
        watch.starts = 0  # the handler came after the first session_start
        bob = await login("bob@localhost/laptop", PASSWORD, b.c2s_port, cert)
        bots.append(bob)
        await until(lambda: ("alice@localhost/phone", "available") in bob.presences)
        await until(lambda: ("bob@localhost/laptop", "available") in alice.presences)

        sent_by_alice: list[str] = []
        sent_by_bob: list[str] = []
        stop = asyncio.Event()

        async def chat() -> None:
            index = 0
            while not stop.is_set():
                if watch.connected:
                    alice.say("bob@localhost", f"a{index}")
                    sent_by_alice.append(f"a{index}")
                bob.say("alice@localhost", f"b{index}")
                sent_by_bob.append(f"b{index}")
                index += 1
                await asyncio.sleep(0.05)

        chatting = asyncio.create_task(chat())
        await asyncio.sleep(1.0)
        code, out = await nitro(a.config, "upgrade")
        assert code == 0, out
        new = read_pid(a.directory / "nitro.pid")
        assert new is not None
        assert new != old
        await asyncio.sleep(1.5)
        stop.set()
        await chatting
        try:
            await until(
                lambda: len(bob.messages) >= len(sent_by_alice) and len(alice.messages) >= len(sent_by_bob)
            )
        except AssertionError:
            missing_b = [m for m in sent_by_alice if m not in bob.messages]
            missing_a = [m for m in sent_by_bob if m not in alice.messages]
            raise AssertionError(
                f"bob lacks {missing_b}, alice lacks {missing_a}; {watch.resumed} {watch.starts}"
            ) from None
        await asyncio.sleep(0.5)  # a duplicate would come now
        assert bob.messages == sent_by_alice  # none lost, none twice, in order
        assert alice.messages == sent_by_bob
        assert watch.resumed >= 1  # resumed on the successor
        assert watch.starts == 0  # never a fresh session
        assert ("alice@localhost/phone", "unavailable") not in bob.presences
        log = a.log.read_text(errors="replace")
        assert "taking the name over from the process this upgrade replaces" in log
        assert "already taken" not in log
        assert "NATS connection lost" not in log  # the old process closing its link is no alarm
        code, status = await nitro(b.config, "status")
        assert code == 0
        assert "cluster node node1: 1 sessions" in status, status
    finally:
        await close(*bots)


@pytest.mark.parametrize("cluster", ["[upgrade]\ndrain_rate = 0.5\n"], indirect=True)
async def test_a_user_who_logs_in_on_the_successor_during_the_drain_gets_stanzas_from_other_nodes(
    cluster: LocalCluster,
) -> None:
    """A slow drain (four sessions, one every two seconds): erin binds on the successor while the old
    process still answers for the node; what bob on node2 sends her reaches her then, not offline storage."""
    async with open_sql_storage(cluster.dsn) as storage:
        for name in ("bob", "carol", "dave", "frank", "gina", "erin"):
            await create_account(storage, name, PASSWORD)
    cert = cluster.directory / "tls" / "cert.pem"
    a, b = cluster.nodes
    bots: list[Bot] = []
    try:
        for name in ("carol", "dave", "frank", "gina"):  # resumable: each moves in turn
            bots.append(await login(f"{name}@localhost/r", PASSWORD, a.c2s_port, cert, plugins=("xep_0198",)))
        bob = await login("bob@localhost/laptop", PASSWORD, b.c2s_port, cert)
        bots.append(bob)
        upgrading = asyncio.create_task(nitro(a.config, "upgrade"))
        await until(lambda: "is ready and accepting; draining" in a.log.read_text(errors="replace"))
        erin = await login("erin@localhost/new", PASSWORD, a.c2s_port, cert)  # accepted by the successor
        bots.append(erin)
        await asyncio.sleep(0.5)  # node2 learns where erin is
        for index in range(5):
            bob.say("erin@localhost/new", f"m{index}")
            await asyncio.sleep(0.05)
        await until(lambda: len(erin.messages) >= 5, 10)
        assert "upgrade: drained" not in a.log.read_text(errors="replace")  # it was during the drain
        assert erin.messages == [f"m{index}" for index in range(5)]
        code, out = await upgrading
        assert code == 0, out
    finally:
        await close(*bots)


@pytest.mark.parametrize("cluster", ["[upgrade]\ndrain_rate = 0.5\n"], indirect=True)
async def test_the_old_process_killed_mid_drain_leaves_the_successor_answering_for_the_node(
    cluster: LocalCluster,
) -> None:
    """SIGKILL of the old process during a slow drain: the successor answers for the node at once (what it
    held included), keeps the name, and a user bound on it gets what bob on node2 sends."""
    async with open_sql_storage(cluster.dsn) as storage:
        for name in ("bob", "carol", "dave", "frank", "erin"):
            await create_account(storage, name, PASSWORD)
    cert = cluster.directory / "tls" / "cert.pem"
    a, b = cluster.nodes
    assert a.pid is not None
    old = a.pid
    bots: list[Bot] = []
    try:
        for name in ("carol", "dave", "frank"):
            bots.append(await login(f"{name}@localhost/r", PASSWORD, a.c2s_port, cert, plugins=("xep_0198",)))
        bob = await login("bob@localhost/laptop", PASSWORD, b.c2s_port, cert)
        bots.append(bob)
        upgrading = asyncio.create_task(nitro(a.config, "upgrade"))
        await until(lambda: "is ready and accepting; draining" in a.log.read_text(errors="replace"))
        erin = await login("erin@localhost/new", PASSWORD, a.c2s_port, cert)  # on the successor
        bots.append(erin)
        a.kill()  # the old process, by its pid
        await until(lambda: "this process answers for it now" in a.log.read_text(errors="replace"))
        await asyncio.sleep(0.5)
        for index in range(3):
            bob.say("erin@localhost/new", f"m{index}")
        await until(lambda: erin.messages == ["m0", "m1", "m2"], 10)
        assert (await upgrading)[0] != 0  # the process it asked died: no "done"
        successor = read_pid(a.directory / "nitro.pid")
        assert successor is not None
        assert successor != old
        code, status = await nitro(b.config, "status")
        assert code == 0
        assert "cluster node node1:" in status, status
        assert "already taken" not in a.log.read_text(errors="replace")
    finally:
        await close(*bots)
