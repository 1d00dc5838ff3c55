"""Zero-downtime upgrades against real `nitro serve` processes: listeners handed over (no connection attempt
refused or reset), resumable sessions moved with their unacknowledged stanzas, the others closed with
`<system-shutdown/>` and their stanzas stored offline, and every fault of the issue: a second upgrade, a
successor that exits, hangs, sends garbage or dies mid-drain, the old process killed mid-drain, Redis down
during the check, a stale PID file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from upgrade_node import (
    HEADER,
    Node,
    alive,
    bodies,
    message,
    node,
    resume,
    upgrade_section,
)

from integration.redis_servers import REDIS_SERVER, start_servers

ALICE, BOB, CAROL, DAVE = (f"{name}@localhost" for name in ("alice", "bob", "carol", "dave"))


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Node]:
    running = node(tmp_path, upgrade_section(ready_timeout=20.0, drain_rate=50.0, drain_deadline=10.0))
    await running.add_users("alice", "bob", "carol", "dave")
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


class ConnectLoop:
    """A client connecting in a tight loop: each attempt opens a stream and waits for its features."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 10)
                writer.write(HEADER)
                data = b""
                async with asyncio.timeout(10):
                    while b"<stream:features" not in data:
                        chunk = await reader.read(4096)
                        if not chunk:
                            raise ConnectionError(f"closed after {data[-200:]!r}")
                        data += chunk
                writer.close()
                self.ok += 1
            except (OSError, TimeoutError) as exc:
                self.failures.append(repr(exc))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(self.task, 15)


async def test_an_upgrade_refuses_no_connect_and_moves_resumable_sessions(served: Node) -> None:
    old = served.first_pid
    bob, previd = await served.managed("bob", "phone")  # resumable: moves to the successor
    carol, _ = await served.managed("carol", "pad", resume=False)  # stream management without resumption
    alice = await served.bound("alice", "desk")  # no stream management
    for n in (1, 2, 3):
        alice.send(message(f"{BOB}/phone", f"b{n}") + message(f"{CAROL}/pad", f"c{n}"))
    await bob.expect(b"<body>b3</body>")  # read, never acknowledged
    await carol.expect(b"<body>c3</body>")
    connects = ConnectLoop(served.config.c2s.port)

    code, out, err = await served.nitro("upgrade")

    assert code == 0, err
    assert "upgraded: successor" in out
    new = await served.wait_for_pid(lambda pid: pid != old)
    assert served.first is not None
    await asyncio.wait_for(served.first.wait(), 20)  # the old process exits once drained
    await asyncio.sleep(0.5)
    await connects.stop()
    assert connects.failures == []
    assert connects.ok > 0
    assert b"<system-shutdown" in await alice.until_closed()
    assert b"<system-shutdown" in await carol.until_closed()
    assert b"</stream:stream>" not in await bob.until_closed()  # a lost connection, which SM resumes

    bob = await served.authenticated("bob")
    bob.send(resume(previd, 0))
    await bob.expect(f'previd="{previd}"'.encode())
    resent = await bob.expect(b"<body>b3</body>")
    assert bodies(resent.string[: resent.end()]) == ["b1", "b2", "b3"]
    carol, _ = await served.managed("carol", "pad2", resume=False)
    carol.send(b"<presence/>")  # initial presence: the offline messages flow (XEP-0160)
    offline = await carol.expect(b"<body>c3</body>")
    assert bodies(offline.string[: offline.end()]) == ["c1", "c2", "c3"]
    alice = await served.bound("alice", "desk")
    alice.send(message(f"{BOB}/phone", "after"))
    await bob.expect(b"<body>after</body>")
    code, out, _err = await served.nitro("status")
    assert f"pid {new}" in out
    assert "generation: 2" in out
    for peer in (alice, bob, carol):
        peer.close()


async def test_a_message_for_a_session_while_it_moves_follows_it(tmp_path: Path) -> None:
    """A slow drain (1 session/s): bob moves first; dave, still on the old process, writes to him; bob
    resumes on the successor and gets it."""
    running = node(tmp_path, upgrade_section(ready_timeout=20.0, drain_rate=1.0, drain_deadline=20.0))
    await running.add_users("bob", "dave", "carol", "alice")
    await running.start()
    try:
        bob, previd = await running.managed("bob", "phone")
        others = [await running.managed(name, "x") for name in ("alice", "carol")]
        dave, _ = await running.managed("dave", "desk")  # logged in last: drained last
        upgrade = asyncio.create_task(running.nitro("upgrade"))
        await bob.until_closed()  # bob has moved
        dave.send(message(f"{BOB}/phone", "while-moving"))  # reaches the old process, which forwards it
        bob = await running.authenticated("bob")
        bob.send(resume(previd, 0))
        await bob.expect(f'previd="{previd}"'.encode())
        await bob.expect(b"<body>while-moving</body>")
        code, _out, err = await upgrade
        assert code == 0, err
        for peer, _ in (*others, (dave, "")):
            peer.close()
        bob.close()
    finally:
        await running.stop()


async def test_a_client_resuming_early_pulls_its_session_from_the_old_process(tmp_path: Path) -> None:
    """The client lost its connection and resumes on the successor before the drain reached it."""
    running = node(tmp_path, upgrade_section(ready_timeout=20.0, drain_rate=1.0, drain_deadline=30.0))
    await running.add_users("alice", "bob", "carol", "dave")
    await running.start()
    try:
        first = [await running.managed(name, "x") for name in ("alice", "carol", "dave")]
        bob, previd = await running.managed("bob", "phone")  # last: the drain reaches it after ~4 s
        first[0][0].send(message(f"{BOB}/phone", "queued"))
        await bob.expect(b"<body>queued</body>")
        upgrade = asyncio.create_task(running.nitro("upgrade"))
        await running.wait_log("is ready and accepting")
        bob.writer.transport.abort()  # a network failure; the client resumes (on the successor now)
        bob = await running.authenticated("bob")
        bob.send(resume(previd, 0))
        await bob.expect(f'previd="{previd}"'.encode())
        await bob.expect(b"<body>queued</body>")
        code, _out, err = await upgrade
        assert code == 0, err
        for peer, _ in first:
            peer.close()
        bob.close()
    finally:
        await running.stop()


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


HANG = "import time\ntime.sleep(120)\n"
EXIT = "raise SystemExit(3)\n"
GARBAGE = (
    "import os, socket\n"
    "sock = socket.socket(fileno=int(os.environ['NITRO_HANDOVER_FD']))\n"
    "sock.recv(65536)\n"
    "sock.sendall(b'\\x00\\x00\\x00\\x05hello')\n"
    "import time\ntime.sleep(60)\n"
)


@pytest.mark.fault
@pytest.mark.parametrize(
    ("successor", "reason"),
    [
        (EXIT, "successor not ready"),
        (HANG, "no message within 3.0 s"),
        (GARBAGE, "not JSON"),
    ],
    ids=["exits-at-once", "hangs-before-ready", "sends-garbage"],
)
async def test_a_successor_that_fails_before_ready_is_killed_and_the_old_serves_on(
    tmp_path: Path, successor: str, reason: str
) -> None:
    command = [sys.executable, script(tmp_path, "successor.py", successor)]
    running = node(tmp_path, upgrade_section(ready_timeout=3.0, command=command))
    await running.add_users("alice", "bob")
    await running.start()
    try:
        bob, _previd = await running.managed("bob", "phone")
        connects = ConnectLoop(running.config.c2s.port)
        code, _out, err = await running.nitro("upgrade")
        await connects.stop()
        assert code == 4, err
        assert "rolled back" in err
        assert reason in err
        assert connects.failures == []
        assert running.pid == running.first_pid
        await running.wait_log("upgrade rolled back")
        alice = await running.bound("alice", "desk")  # the old process still serves, sessions untouched
        alice.send(message(f"{BOB}/phone", "still here"))
        await bob.expect(b"<body>still here</body>")
        code, out, _err = await running.nitro("status")
        assert "upgrade: rolled-back" in out
        assert "generation: 1" in out
        alice.close()
        bob.close()
    finally:
        await running.stop()


@pytest.mark.fault
async def test_a_second_upgrade_while_one_runs_is_refused(tmp_path: Path) -> None:
    command = [sys.executable, script(tmp_path, "successor.py", HANG)]
    # a hung successor is given up after ready_timeout: long enough for a second `nitro` CLI process to start
    # and ask (several seconds on a loaded machine)
    running = node(tmp_path, upgrade_section(ready_timeout=15.0, command=command))
    await running.start()
    try:
        first = asyncio.create_task(running.nitro("upgrade"))
        await running.wait_log("successor")
        code, _out, err = await running.nitro("upgrade")
        assert code == 3
        assert "already under way" in err
        code, _out, _err = await first
        assert code == 4
    finally:
        await running.stop()


@pytest.mark.fault
async def test_the_successor_dies_mid_drain_and_the_old_takes_over_again(tmp_path: Path) -> None:
    running = node(tmp_path, upgrade_section(ready_timeout=20.0, drain_rate=1.0, drain_deadline=30.0))
    await running.add_users("alice", "bob", "carol", "dave")
    await running.start()
    try:
        bob, previd = await running.managed("bob", "phone")  # first: moved before the successor dies
        rest = [await running.managed(name, "x") for name in ("alice", "carol", "dave")]
        rest[0][0].send(message(f"{BOB}/phone", "before"))
        await bob.expect(b"<body>before</body>")
        upgrade = asyncio.create_task(running.nitro("upgrade"))
        await bob.until_closed()  # moved
        successor = await running.wait_for_pid(lambda pid: pid != running.first_pid)
        os.kill(successor, signal.SIGKILL)
        code, _out, err = await upgrade
        assert code == 4, err
        assert "died during the drain" in err
        await running.wait_for_pid(lambda pid: pid == running.first_pid)
        bob = await running.authenticated("bob")  # the old process accepts again, and has bob back
        bob.send(resume(previd, 0))
        await bob.expect(f'previd="{previd}"'.encode())
        await bob.expect(b"<body>before</body>")
        rest[1][0].send(message(f"{BOB}/phone", "after"))  # carol's connection never moved
        await bob.expect(b"<body>after</body>")
        bob.close()
        for peer, _ in rest:
            peer.close()
    finally:
        await running.stop()


@pytest.mark.fault
async def test_sigkill_of_the_old_mid_drain_leaves_the_successor_serving(tmp_path: Path) -> None:
    """What the successor adopted resumes; the sessions still in the killed process are adopted from their
    shadow copies (tests/test_upgrade_shadow.py has the details): their clients resume too."""
    running = node(tmp_path, upgrade_section(ready_timeout=20.0, drain_rate=1.0, drain_deadline=30.0))
    await running.add_users("alice", "bob", "carol", "dave")
    await running.start()
    try:
        bob, bob_id = await running.managed("bob", "phone")  # moved first
        middle = [await running.managed(name, "x") for name in ("alice", "carol")]
        dave, dave_id = await running.managed("dave", "desk")  # still in the old process when it dies
        upgrade = asyncio.create_task(running.nitro("upgrade"))
        await bob.until_closed(60)
        os.kill(running.first_pid, signal.SIGKILL)
        code, _out, _err = await upgrade
        assert code != 0  # the command lost its answer with the process
        successor = await running.wait_for_pid(lambda pid: pid != running.first_pid)
        await dave.until_closed()
        bob = await running.authenticated("bob")
        bob.send(resume(bob_id, 0))
        await bob.expect(f'previd="{bob_id}"'.encode())
        dave = await running.authenticated("dave")
        dave.send(resume(dave_id, 0))
        await dave.expect(f'previd="{dave_id}"'.encode())
        code, out, _err = await running.nitro("status")
        assert f"pid {successor}" in out
        assert "taking over from the previous generation: gone, 4 of 4 sessions adopted" in out
        for peer in (bob, dave, *(peer for peer, _ in middle)):
            peer.close()
    finally:
        await running.stop()


@pytest.mark.fault
@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_redis_unreachable_during_the_check_refuses_ready(tmp_path: Path) -> None:
    (redis,) = start_servers(tmp_path, 1)
    try:
        extra = f'[redis]\ninstances = ["{redis.url}"]\nhealth_interval = 0.2\n'
        running = node(tmp_path, extra + upgrade_section(ready_timeout=20.0))
        await running.start()
        try:
            redis.kill()
            code, _out, err = await running.nitro("upgrade")
            assert code == 4, err
            assert "Redis unreachable" in err
            assert running.pid == running.first_pid
            peer = await running.open()  # still serving
            peer.close()
        finally:
            await running.stop()
    finally:
        redis.stop()


@pytest.mark.fault
async def test_a_stale_pid_file_is_replaced_and_named(tmp_path: Path) -> None:
    running = node(tmp_path)
    path = tmp_path / "run" / "nitro.pid"
    path.parent.mkdir()
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await dead.wait()  # a pid no process has now
    path.write_text(f"{dead.pid}\n")
    code, _out, err = await running.nitro("upgrade")  # nothing runs: no socket, a stale pid file
    assert code == 1
    assert "stale pid file" in err
    await running.start()
    try:
        log = await running.wait_log("stale, replaced")
        assert f"named process {dead.pid}" in log
        assert running.pid == running.first_pid
    finally:
        await running.stop()


async def test_sigusr2_upgrades_and_systemd_hears_of_it(tmp_path: Path) -> None:
    notify = tmp_path / "notify.sock"
    import socket

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.setblocking(False)
    running = node(tmp_path, upgrade_section(ready_timeout=20.0))
    await running.start(env={"NOTIFY_SOCKET": str(notify)})
    try:
        os.kill(running.first_pid, signal.SIGUSR2)
        new = await running.wait_for_pid(lambda pid: pid != running.first_pid)
        assert running.first is not None
        await asyncio.wait_for(running.first.wait(), 20)
        messages: list[str] = []
        with contextlib.suppress(BlockingIOError):
            while True:
                messages.append(listener.recv(4096).decode())
        assert f"READY=1\nMAINPID={running.first_pid}" in messages[0]
        assert any("RELOADING=1" in text for text in messages)
        assert any(f"MAINPID={new}" in text and "READY=1" in text for text in messages)
        assert alive(new)
    finally:
        listener.close()
        await running.stop()


async def test_sigterm_is_a_graceful_shutdown_that_loses_nothing(tmp_path: Path) -> None:
    """What a client with stream management never acknowledged is stored offline; the next server has it."""
    running = node(tmp_path)
    await running.add_users("alice", "bob")
    await running.start()
    try:
        bob, _previd = await running.managed("bob", "phone")
        alice = await running.bound("alice", "desk")
        alice.send(message(f"{BOB}/phone", "t1") + message(f"{BOB}/phone", "t2"))
        await bob.expect(b"<body>t2</body>")  # read, never acknowledged
        os.kill(running.first_pid, signal.SIGTERM)
        assert b"<system-shutdown" in await bob.until_closed()
        assert running.first is not None
        assert await asyncio.wait_for(running.first.wait(), 20) == 0
        await running.start()
        bob, _ = await running.managed("bob", "laptop", resume=False)
        bob.send(b"<presence/>")
        stored = await bob.expect(b"<body>t2</body>")
        assert bodies(stored.string[: stored.end()]) == ["t1", "t2"]
        bob.close()
        alice.close()
    finally:
        await running.stop()


@pytest.mark.fault
async def test_a_config_the_successor_cannot_read_is_a_rollback_with_the_reason(served: Node) -> None:
    served.file.write_text(served.file.read_text() + "\n[offline]\nquota = 'many'\n")
    os.kill(served.first_pid, signal.SIGUSR2)  # `nitro upgrade` would read the broken file itself first
    log = await served.wait_log("upgrade rolled back")
    assert "successor failed its check: configuration: " in log
    assert "[offline].quota: expected int" in log
    assert served.pid == served.first_pid
    peer = await served.open()
    peer.close()


async def test_status_shows_the_drain_and_its_deadline_cuts_it_short(tmp_path: Path) -> None:
    """A session every 10 s would take 40 s for four; the 20 s deadline hands the rest over at once. (The
    deadline leaves room for two `nitro` CLI processes to start and ask while the drain runs.)"""
    running = node(tmp_path, upgrade_section(ready_timeout=20.0, drain_rate=0.1, drain_deadline=20.0))
    await running.add_users("alice", "bob", "carol", "dave")
    await running.start()
    try:
        peers = [await running.managed(name, "x") for name in ("alice", "bob", "carol", "dave")]
        started = asyncio.get_running_loop().time()
        upgrade = asyncio.create_task(running.nitro("upgrade"))
        await running.wait_log("is ready and accepting")
        code, out, _err = await running.nitro("status")  # the successor answers on the handed-over socket
        assert code == 0
        assert "generation: 2" in out
        assert "taking over from the previous generation: draining" in out
        assert "of 4 sessions adopted" in out
        code, _out, err = await running.nitro("upgrade")  # the successor's own upgrade waits for the drain
        assert code == 3
        assert "already under way" in err
        code, _out, err = await upgrade
        assert code == 0, err
        assert asyncio.get_running_loop().time() - started < 35.0  # well short of the 40 s of the full drain
        await running.wait_log("drain deadline passed")
        for peer, _previd in peers:  # every connection was handed over and closed
            await peer.until_closed()
        for (_peer, previd), name in zip(peers, ("alice", "bob", "carol", "dave"), strict=True):
            resumed = await running.authenticated(name)
            resumed.send(resume(previd, 0))
            await resumed.expect(f'previd="{previd}"'.encode())
            resumed.close()
        code, out, _err = await running.nitro("status")
        assert (
            "taking over from the previous generation: done, 4 of 4 sessions adopted, 0 closed there" in out
        )
    finally:
        await running.stop()
