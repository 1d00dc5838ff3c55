"""`nitro upgrade` of a node with `[server] workers = 2` (real `nitro serve` processes, a nats-server and a
redis-server of the test's own, raw XMPP streams): every worker is replaced, one at a time, its resumable
sessions move to its successor; a replaced worker killed later is restarted by the new worker 0; a
successor of worker 1 that never gets ready is a rollback (exit 4) and a second upgrade meanwhile exit 3."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats_servers import NatsServer, nats_server
from upgrade_node import Node, Peer, bodies, message, node, resume, upgrade_section

from integration.redis_servers import REDIS_SERVER, start_servers

__all__ = ["nats_server"]
pytestmark = [pytest.mark.slow, pytest.mark.cluster]

USERS = [f"u{index}" for index in range(10)]


@pytest.fixture
async def workers(
    tmp_path: Path, nats_server: NatsServer, request: pytest.FixtureRequest
) -> AsyncIterator[Node]:
    """A node of two workers; more TOML (e.g. an [upgrade] section) as the parameter."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is needed")
    (tmp_path / "redis").mkdir()
    (redis,) = start_servers(tmp_path / "redis", 1)
    extra = getattr(
        request, "param", upgrade_section(ready_timeout=20.0, drain_rate=50.0, drain_deadline=10.0)
    )
    if extra == "<hanging>":
        extra = hanging(tmp_path)
    extra += f"""
[redis]
instances = ["{redis.url}"]
[cluster]
node = "n1"
nats = ["{nats_server.url}"]
nats_user = "{nats_server.user}"
nats_password = "{nats_server.password}"
heartbeat_ttl = 3.0
"""
    running = node(tmp_path, extra, server="workers = 2")
    await running.add_users(*USERS)
    try:
        await running.start()
        await running.wait_log("worker 1 started")
        await until_worker_serves(running, 1)
        yield running
    finally:
        await running.stop()
        redis.stop()


async def status(running: Node) -> dict[str, Any]:
    code, out, err = await running.nitro("status", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert isinstance(result, dict)
    return result


def worker_pids(result: dict[str, Any]) -> dict[int, int]:
    rows = result["workers"]
    assert isinstance(rows, list)
    return {row["worker"]: row["pid"] for row in rows}


async def until_worker_serves(running: Node, index: int, not_pid: int | None = None) -> int:
    """Worker `index` answers on its own admin socket (with a pid other than `not_pid`)."""
    for _ in range(300):
        result = await status(running)
        row = next(row for row in result["workers"] if row["worker"] == index)
        own = row.get("status") or (result if index == 0 else None)
        if own is not None and own["pid"] == row["pid"] != not_pid:
            return int(row["pid"])
        await asyncio.sleep(0.2)
    raise AssertionError(f"worker {index} does not serve: {result}")


async def resumed(running: Node, user: str, previd: str) -> tuple[Peer, bytes]:
    """Resume `previd` (h=0: nothing acknowledged) on whichever worker the kernel gives the connection to:
    one that does not hold the session takes it from the one that does (nitro/ops/resume_anywhere.py)."""
    peer = await running.authenticated(user)
    peer.send(resume(previd, 0))
    found = await peer.expect(re.compile(rb"<resumed [^>]*>|<failed .*?</failed>"), timeout=15.0)
    assert found.group(0).startswith(b"<resumed"), (user, found.group(0))
    return peer, found.group(0)


async def test_an_upgrade_replaces_every_worker_and_moves_their_sessions(workers: Node) -> None:
    before = worker_pids(await status(workers))
    peers: dict[str, tuple[Peer, str]] = {}
    for user in USERS:  # SO_REUSEPORT spreads them over both workers
        peers[user] = await workers.managed(user, "r")
    result = await status(workers)
    per_worker = {
        row["worker"]: row["status"]["bound"] if row["worker"] else result["bound"]
        for row in result["workers"]
    }
    assert sum(per_worker.values()) == len(USERS)
    assert all(count > 0 for count in per_worker.values()), per_worker  # all 10 on one: p = 2**-9
    for index, user in enumerate(USERS):  # to the next user, often on the other worker (over NATS)
        to = f"{USERS[(index + 1) % len(USERS)]}@localhost/r"
        peers[user][0].send(b"".join(message(to, f"{user}-{n}") for n in (1, 2, 3)))
    for index, user in enumerate(USERS):
        sender = USERS[index - 1]
        await peers[user][0].expect(f"<body>{sender}-3</body>".encode())  # read, never acknowledged

    code, out, err = await workers.nitro("upgrade")

    assert code == 0, err
    assert "every worker of the node replaced" in out
    assert "worker 1: process" in out
    assert "worker 0: process" in out
    new0 = await workers.wait_for_pid(lambda pid: pid != before[0])
    after = worker_pids(await status(workers))
    assert after[0] == new0
    assert all(after[index] != before[index] for index in before), (before, after)  # every worker replaced
    for user in USERS:
        assert b"</stream:stream>" not in await peers[user][0].until_closed()  # lost, to be resumed
    for index, user in enumerate(USERS):
        sender = USERS[index - 1]
        peer, _ = await resumed(workers, user, peers[user][1])
        resent = await peer.expect(f"<body>{sender}-3</body>".encode())
        assert bodies(resent.string[: resent.end()]) == [
            f"{sender}-{n}" for n in (1, 2, 3)
        ]  # none lost, none twice
        peers[user] = (peer, peers[user][1])
    for index, user in enumerate(USERS):  # the replaced workers route to each other
        peers[user][0].send(message(f"{USERS[(index + 1) % len(USERS)]}@localhost/r", f"{user}-after"))
    for index, user in enumerate(USERS):
        await peers[user][0].expect(f"<body>{USERS[index - 1]}-after</body>".encode())
    code, text, _err = await workers.nitro("status")
    assert "worker 1: pid" in text, text
    assert "generation 2" in text, text

    os.kill(after[1], signal.SIGKILL)  # a replaced worker: no child of the new worker 0
    restarted = await until_worker_serves(workers, 1, not_pid=after[1])
    workers.pids.add(restarted)
    assert "worker 1 (pid" in await workers.wait_log("starting it again")
    fresh = await workers.managed("u0", "again")  # the node takes connections on both again
    fresh[0].close()
    for peer, _previd in peers.values():
        peer.close()


HANG_WORKER_1 = (  # the [upgrade] command: worker 1's successor never gets ready (it gives up once the test
    # creates `release` next to this script), the others are Nitro
    "import os, sys, time\n"
    "args = sys.argv[1:]\n"
    "if '--worker' in args and args[args.index('--worker') + 1] == '1':\n"
    "    release = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'release')\n"
    "    end = time.monotonic() + 120\n"
    "    while not os.path.exists(release) and time.monotonic() < end:\n"
    "        time.sleep(0.1)\n"
    "    sys.exit(1)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'nitro', *sys.argv[1:]])\n"
)


def hanging(tmp_path: Path) -> str:
    path = tmp_path / "successor.py"
    path.write_text(HANG_WORKER_1)
    # the second `nitro upgrade` must come while the first waits: a `nitro` process can take seconds to
    # start on a loaded machine, so the successor fails when the test says so (not at a short timeout)
    return upgrade_section(ready_timeout=60.0, command=[sys.executable, str(path)])


@pytest.mark.fault
@pytest.mark.parametrize("workers", ["<hanging>"], indirect=True)
async def test_a_failing_successor_of_worker_1_rolls_back_and_a_second_upgrade_is_refused(
    workers: Node,
) -> None:
    before = worker_pids(await status(workers))
    peer, _previd = await workers.managed("u1", "r")
    first = asyncio.create_task(workers.nitro("upgrade"))
    await workers.wait_log("upgrade: replacing worker 1")
    code, _out, err = await workers.nitro("upgrade")
    assert code == 3, err
    assert "already under way" in err
    (workers.file.parent / "release").touch()  # worker 1's successor gives up now
    code, _out, err = await first
    assert code == 4, err
    assert "worker 1:" in err
    assert "no worker was replaced" in err
    assert worker_pids(await status(workers)) == before  # worker 1 goes on serving, worker 0 untouched
    assert await until_worker_serves(workers, 1) == before[1]
    other, _ = await workers.managed("u2", "r")
    other.send(message("u1@localhost/r", "still here"))  # whichever worker each is on
    await peer.expect(b"<body>still here</body>")
    peer.close()
    other.close()
