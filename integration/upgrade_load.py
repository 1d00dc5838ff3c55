"""Upgrades under load: a Nitro node with slixmpp clients (most with stream management and resumption, the
rest without) exchanging sequence-numbered messages at a steady rate while new clients keep connecting and a
raw client connects in a tight loop; several `nitro upgrade`s back to back. Counts what must stay zero.

    python -m integration.upgrade_load                                  # the test's scale
    python -m integration.upgrade_load --clients 400 --rate 200 --upgrades 3   # the benchmark

Counts: refused or reset connection attempts, lost messages (sent, not received and not in offline
storage), duplicates delivered to a resumed session, sessions that failed to resume. Figures: how long each
old process took to exit, p50/p99 latency in the upgrade windows against steady state. Only clients with
stream management send (their stanzas are acknowledged, so "sent" is known); clients without it receive,
and what reached them at a `<system-shutdown/>` moment must be in offline storage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slixmpp

from nitro.accounts import create_account
from nitro.config import load_config
from nitro.storage.layered import open_storage

DOMAIN = "localhost"
PASSWORD = "load-password"
HEADER = (
    b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams'>"
)
RECONNECT_DELAY = 0.2
log = logging.getLogger("upgrade_load")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_SEQ = re.compile(r"<body>seq (\S+) ")  # a load message's id in what a client writes


@dataclass
class Counts:
    sent: dict[str, tuple[str, float]] = field(default_factory=dict)  # id → (recipient, sent at): written
    pending: dict[str, tuple[str, float]] = field(default_factory=dict)  # handed to slixmpp, not yet written
    received: dict[str, dict[str, int]] = field(default_factory=dict)  # recipient → id → times
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (received at, seconds)
    failed_resumes: int = 0
    resumes: int = 0
    connect_failures: list[str] = field(default_factory=list)
    connects: int = 0
    newcomer_failures: list[str] = field(default_factory=list)
    newcomers: int = 0
    windows: list[tuple[float, float]] = field(default_factory=list)  # upgrade windows (start, end)
    exit_seconds: list[float] = field(default_factory=list)
    upgrade_codes: list[int] = field(default_factory=list)


class Bot:
    """One user's client; reconnects when its connection is lost (resuming when it has stream management)."""

    def __init__(self, name: str, port: int, counts: Counts, *, managed: bool) -> None:
        self.name = name
        self.jid = f"{name}@{DOMAIN}"
        self.port = port
        self.counts = counts
        self.managed = managed
        self.stopping = False
        self.started = asyncio.get_running_loop().create_future()
        self.client = slixmpp.ClientXMPP(f"{self.jid}/load", PASSWORD)
        client = self.client
        client.enable_starttls = False  # plain TCP: PLAIN is allowed (the node's config); TLS costs CPU
        client.enable_plaintext = True
        client.enable_direct_tls = False
        client.register_plugin("xep_0030")
        client.plugin[
            "feature_mechanisms"
        ].unencrypted_plain = True  # loopback, no TLS: see the node's config
        if managed:
            client.register_plugin("xep_0198")
            client.plugin["xep_0198"].window = 5
        write = client.send_raw

        def written(data: str | bytes) -> None:
            # A message counts as sent once it is written to the socket: one slixmpp's send queue drops
            # (NotConnectedError as the old process closes the connection) never reached any server.
            write(data)
            text = data.decode() if isinstance(data, bytes) else data
            for message_id in _SEQ.findall(text):
                if message_id in counts.pending:
                    counts.sent.setdefault(message_id, counts.pending.pop(message_id))

        client.send_raw = written  # type: ignore[method-assign]
        client.add_event_handler("session_start", self._on_start)
        client.add_event_handler("session_resumed", self._on_resumed)
        client.add_event_handler("disconnected", self._on_disconnected)
        client.add_event_handler("message", self._on_message)
        self._sessions = 0

    def connect(self) -> None:
        self.client.connect("127.0.0.1", self.port)

    async def _on_start(self, _event: Any) -> None:
        self._sessions += 1
        if self._sessions > 1 and self.managed:
            self.counts.failed_resumes += 1  # a fresh session where a resume was due
            log.warning("%s: resume failed, new session", self.name)
        self.client.send_presence()  # initial presence: offline messages flow (XEP-0160)
        if not self.started.done():
            self.started.set_result(True)

    def _on_resumed(self, _event: Any) -> None:
        self.counts.resumes += 1

    def _on_disconnected(self, _event: Any) -> None:
        if not self.stopping:
            asyncio.get_running_loop().call_later(RECONNECT_DELAY, self._reconnect)

    def _reconnect(self) -> None:
        if not self.stopping:
            self.connect()

    def _on_message(self, message: Any) -> None:
        body = message["body"]
        if not body or not body.startswith("seq "):
            return
        _seq, message_id, sent_at = body.split()
        seen = self.counts.received.setdefault(self.jid, {})
        seen[message_id] = seen.get(message_id, 0) + 1
        now = time.time()
        self.counts.latencies.append((now, now - float(sent_at)))

    @property
    def connected(self) -> bool:
        return self.client.transport is not None and self.client.authenticated

    def send(self, to: str, message_id: str) -> bool:
        if not self.connected:
            return False
        self.client.send_message(
            mto=slixmpp.JID(to), mbody=f"seq {message_id} {time.time():.6f}", mtype="chat"
        )
        return True

    async def stop(self) -> None:
        self.stopping = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.disconnect(wait=1.0), 5)
        self.client.abort()


async def connect_loop(port: int, counts: Counts, stop: asyncio.Event) -> None:
    """A raw client connecting in a tight loop: every attempt must get the stream features."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            writer.write(HEADER)
            data = b""
            async with asyncio.timeout(10):
                while b"<stream:features" not in data:
                    chunk = await reader.read(4096)
                    if not chunk:
                        raise ConnectionError(f"closed after {data[-120:]!r}")
                    data += chunk
            writer.close()
            counts.connects += 1
        except (OSError, TimeoutError) as exc:
            counts.connect_failures.append(repr(exc))
        await asyncio.sleep(0.01)


async def newcomers(port: int, names: list[str], counts: Counts, stop: asyncio.Event, every: float) -> None:
    """New clients keep logging in (and out) during the run."""
    for name in names:
        if stop.is_set():
            return
        bot = Bot(name, port, counts, managed=False)
        bot.connect()
        try:
            await asyncio.wait_for(asyncio.shield(bot.started), 20)
            counts.newcomers += 1
        except TimeoutError:
            counts.newcomer_failures.append(name)
        await bot.stop()
        await asyncio.sleep(every)


class NodeProcess:
    """`nitro serve` on a config in `directory`, and its generations (PID file)."""

    def __init__(self, directory: Path, drain_rate: float) -> None:
        self.directory = directory
        self.port = free_port()
        self.file = directory / "nitro.toml"
        self.file.write_text(
            f"""
[server]
domain = "{DOMAIN}"
[storage]
dsn = "sqlite+aiosqlite:///{directory}/nitro.db"
[c2s]
port = {self.port}
direct_tls_port = {free_port()}
require_encryption = false
allow_plain_without_tls = true
[tls]
cert = "{directory}/tls/cert.pem"
key = "{directory}/tls/key.pem"
[metrics]
port = 0
[http]
enabled = false
[auth]
scram_iterations = 4096
[limits]
bytes_per_second = 0
stanzas_per_second = 0
max_connections_per_address = 100000
[offline]
quota = 100000
[modules]
disabled = ["mam"]
[admin]
socket = "run/admin.sock"
pid_file = "run/nitro.pid"
[upgrade]
ready_timeout = 30.0
drain_rate = {drain_rate}
drain_deadline = 60.0
"""
        )
        self.config = load_config(self.file)
        self.pids: set[int] = set()
        self.log = directory / "nitro.log"

    @property
    def pid(self) -> int | None:
        try:
            text = (self.directory / "run" / "nitro.pid").read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    async def create_users(self, names: list[str]) -> None:
        async with open_storage(self.config) as storage:
            for name in names:
                await create_account(storage, name, PASSWORD, iterations=4096)

    async def start(self) -> None:
        with self.log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "nitro",
                "--config",
                str(self.file),
                "serve",
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        self.pids.add(process.pid)
        end = time.monotonic() + 60
        while self.pid != process.pid:
            if time.monotonic() > end or process.returncode is not None:
                raise RuntimeError(f"nitro did not start; see {self.log}")
            await asyncio.sleep(0.1)

    async def upgrade(self, counts: Counts) -> None:
        old = self.pid
        started = time.monotonic()
        window_start = time.time()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nitro",
            "--config",
            str(self.file),
            "upgrade",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode is not None
        counts.upgrade_codes.append(process.returncode)
        log.info("upgrade: %s%s", out.decode().strip(), err.decode().strip())
        while old is not None and _alive(old) and time.monotonic() - started < 120:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # another process's exit: nothing to await
        counts.exit_seconds.append(time.monotonic() - started)
        counts.windows.append((window_start, time.time() + 2.0))
        if (pid := self.pid) is not None:
            self.pids.add(pid)

    async def offline_ids(self, names: list[str]) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        async with open_storage(self.config) as storage:
            for name in names:
                ids: set[str] = set()
                for stored in await storage.offline.list(name):
                    text = stored.stanza.decode(errors="replace") if isinstance(stored.stanza, bytes) else ""
                    for part in text.split("seq ")[1:]:
                        ids.add(part.split()[0])
                found[f"{name}@{DOMAIN}"] = ids
        return found

    def stop(self) -> None:
        if (pid := self.pid) is not None:
            self.pids.add(pid)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + 15
        while any(_alive(pid) for pid in self.pids) and time.monotonic() < end:
            time.sleep(0.1)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (ProcessLookupError, OSError):
        return False
    return state != "Z"


async def run(
    *,
    clients: int = 24,
    unmanaged_share: float = 0.25,
    rate: float = 20.0,
    upgrades: int = 3,
    between: float = 4.0,
    drain_rate: float = 100.0,
    directory: Path | None = None,
) -> dict[str, Any]:
    """One run; returns the counts and figures (what the test asserts and the benchmark prints)."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nitro-upgrade-")))
        node = NodeProcess(directory, drain_rate)
        names = [f"u{n}" for n in range(clients)]
        fresh = [f"new{n}" for n in range(max(10, upgrades * 10))]
        await node.create_users(names + fresh)
        await node.start()
        try:
            return await _load(node, names, fresh, unmanaged_share, rate, upgrades, between)
        finally:
            node.stop()


async def _load(
    node: NodeProcess,
    names: list[str],
    fresh: list[str],
    unmanaged_share: float,
    rate: float,
    upgrades: int,
    between: float,
) -> dict[str, Any]:
    counts = Counts()
    unmanaged = max(1, round(len(names) * unmanaged_share))
    bots = [Bot(name, node.port, counts, managed=i >= unmanaged) for i, name in enumerate(names)]
    for bot in bots:
        bot.connect()
    await asyncio.wait_for(asyncio.gather(*(asyncio.shield(bot.started) for bot in bots)), 120)
    senders = [bot for bot in bots if bot.managed]
    stop = asyncio.Event()
    background = [
        asyncio.create_task(connect_loop(node.port, counts, stop)),
        asyncio.create_task(newcomers(node.port, fresh, counts, stop, max(0.2, between / 8))),
        asyncio.create_task(_traffic(senders, bots, counts, rate, stop)),
    ]
    steady_until = time.time() + between
    await asyncio.sleep(between)
    for _ in range(upgrades):
        await node.upgrade(counts)
        await asyncio.sleep(between)
    stop.set()
    await asyncio.gather(*background)
    await _settle(bots, counts)
    offline = await node.offline_ids([bot.name for bot in bots])
    for bot in bots:
        await bot.stop()
    return _report(counts, offline, steady_until)


async def _traffic(
    senders: list[Bot], bots: list[Bot], counts: Counts, rate: float, stop: asyncio.Event
) -> None:
    """`rate` messages per second from random senders (with stream management) to random users."""
    sequence = 0
    interval = 1.0 / rate
    next_at = time.monotonic()
    while not stop.is_set():
        sender = random.choice(senders)  # a load pattern, not security
        recipient = random.choice(bots)
        message_id = f"{sender.name}-{sequence}"
        if sender.send(recipient.jid, message_id):
            counts.pending[message_id] = (recipient.jid, time.time())  # counted in `sent` once written
            sequence += 1
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def _settle(bots: list[Bot], counts: Counts, timeout: float = 20.0) -> None:
    """Until every managed sender's queue is acknowledged and nothing more arrives."""
    end = time.monotonic() + timeout
    last = -1
    while time.monotonic() < end:
        for bot in bots:
            if bot.managed and bot.connected:
                bot.client.plugin["xep_0198"].request_ack()
        total = sum(len(ids) for ids in counts.received.values())
        pending = sum(len(bot.client.plugin["xep_0198"].unacked_queue) for bot in bots if bot.managed)
        if total == last and pending == 0:
            return
        last = total
        await asyncio.sleep(1.0)


def _report(counts: Counts, offline: dict[str, set[str]], steady_until: float) -> dict[str, Any]:
    lost: list[str] = []
    in_offline = 0
    for message_id, (recipient, _at) in counts.sent.items():
        if counts.received.get(recipient, {}).get(message_id):
            continue
        if message_id in offline.get(recipient, set()):
            in_offline += 1
            continue
        lost.append(f"{message_id}→{recipient}")
    duplicates = sum(times - 1 for ids in counts.received.values() for times in ids.values() if times > 1)

    def in_window(at: float) -> bool:
        return any(start <= at <= end for start, end in counts.windows)

    window = [seconds for at, seconds in counts.latencies if in_window(at)]
    steady = [seconds for at, seconds in counts.latencies if not in_window(at) and at > steady_until - 60]
    return {
        "sent": len(counts.sent),
        "never_written": len(counts.pending),  # dropped by slixmpp's send queue without a connection
        "delivered": len(counts.sent) - len(lost) - in_offline,
        "in_offline_storage": in_offline,
        "lost": len(lost),
        "lost_ids": lost[:20],
        "duplicates": duplicates,
        "resumes": counts.resumes,
        "failed_resumes": counts.failed_resumes,
        "connects": counts.connects,
        "refused_or_reset": len(counts.connect_failures),
        "connect_errors": counts.connect_failures[:10],
        "newcomers": counts.newcomers,
        "newcomer_failures": len(counts.newcomer_failures),
        "upgrade_exit_codes": counts.upgrade_codes,
        "old_exit_seconds": [round(s, 2) for s in counts.exit_seconds],
        "latency_steady_p50_ms": _percentile(steady, 50),
        "latency_steady_p99_ms": _percentile(steady, 99),
        "latency_upgrade_p50_ms": _percentile(window, 50),
        "latency_upgrade_p99_ms": _percentile(window, 99),
    }


def _percentile(values: list[float], p: int) -> float | None:
    if len(values) < 2:
        return None
    return round(statistics.quantiles(values, n=100)[p - 1] * 1000, 1) if p < 100 else max(values) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=24, help="users online (a quarter without SM)")
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second, in total")
    parser.add_argument("--upgrades", type=int, default=3, help="upgrades back to back")
    parser.add_argument("--between", type=float, default=4.0, help="seconds of load before and after each")
    parser.add_argument("--drain-rate", type=float, default=100.0, help="[upgrade] drain_rate")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("slixmpp").setLevel(logging.ERROR)
    result = asyncio.run(
        run(
            clients=args.clients,
            rate=args.rate,
            upgrades=args.upgrades,
            between=args.between,
            drain_rate=args.drain_rate,
        )
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
