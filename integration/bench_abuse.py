"""Issue 11's abuse figures (items 1, 3 and 4), for one checkout of Nitro: the memory hostile unauthenticated
connections leave behind, a chatting pair's latency and the server's CPU while one client floods, and the
memory a client that never acknowledges makes the server hold.

    python -m integration.bench_abuse                          # this checkout ("after")
    python -m integration.bench_abuse --source /work/main      # another one, e.g. main ("before")
    python -m integration.bench_abuse --scenario names --connections 400

Each scenario starts its own Nitro from `--source` (plain TCP with PLAIN, SQLite in a temporary directory,
default settings otherwise) and reads the server's RSS and CPU time from /proc. It prints figures and
never judges them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

from integration.loadgen.process import running

DOMAIN = "localhost"
PASSWORD = "bench-password"
HEADER = (
    b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams'>"
)
SCENARIOS = ("names", "flood", "sm")


# -- the server ------------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def knows(source: Path, section: str) -> bool:
    """Whether that checkout has the section (`LimitsSection`: older ones refuse an unknown section)."""
    files = (source / "nitro" / "config.py", source / "nitro" / "config_sections.py")
    return any(path.is_file() and f"class {section}" in path.read_text() for path in files)


def own_ports_only(source: Path) -> dict[str, dict[str, object]]:
    """No HTTP listener and no admin socket where the checkout has them: only the c2s port is measured."""
    sections: dict[str, dict[str, object]] = {}
    if knows(source, "HttpSection"):
        sections["http"] = {"enabled": False}
    if knows(source, "AdminSection"):
        sections["admin"] = {"socket": "", "pid_file": ""}
    return sections


def write_config(directory: Path, port: int, extra: dict[str, dict[str, object]]) -> Path:
    sections: dict[str, dict[str, object]] = {
        "server": {"domain": DOMAIN},
        "storage": {"dsn": f"sqlite+aiosqlite:///{directory / 'nitro.db'}"},
        "c2s": {
            "port": port,
            "direct_tls_port": 0,
            "require_encryption": False,
            "allow_plain_without_tls": True,
        },
        "tls": {"cert": str(directory / "cert.pem"), "key": str(directory / "key.pem")},
        "metrics": {"enabled": False},
        "logging": {"level": "WARNING"},
        **extra,
    }
    text = "".join(
        f"[{name}]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in values.items()) + "\n"
        for name, values in sections.items()
    )
    path = directory / "nitro.toml"
    path.write_text(text)
    return path


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


@contextlib.contextmanager
def server(
    source: Path, users: Sequence[str], extra: dict[str, dict[str, object]]
) -> Iterator[tuple[int, int]]:
    """A Nitro from `source` with `users`; yields its port and pid."""
    with tempfile.TemporaryDirectory(prefix="nitro-abuse-") as tmp:
        directory = Path(tmp)
        port = free_port()
        config = write_config(directory, port, {**own_ports_only(source), **extra})
        env = {**os.environ, "PYTHONPATH": str(source)}
        for user in users:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "nitro",
                    "--config",
                    str(config),
                    "user",
                    "add",
                    user,
                    "--password-stdin",
                ],
                input=f"{PASSWORD}\n".encode(),
                env=env,
                cwd=directory,
                check=True,
                capture_output=True,
            )
        command = [sys.executable, "-m", "nitro", "--config", str(config), "serve"]
        with running(
            command, port=port, log=directory / "nitro.log", cwd=directory, cpus=None, env=env
        ) as process:
            yield port, process.pid


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# -- raw clients -----------------------------------------------------------------------------------------


class Raw:
    """A plain-TCP stream read as bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.buffer = reader, writer, b""

    @classmethod
    async def open(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**22)
        raw = cls(reader, writer)
        writer.write(HEADER)
        await raw.until(b"</stream:features>")
        return raw

    async def until(self, marker: bytes, timeout: float = 30.0) -> bytes:
        async with asyncio.timeout(timeout):
            while (end := self.buffer.find(marker)) < 0:
                chunk = await self.reader.read(1 << 20)
                if not chunk:
                    raise EOFError(self.buffer[-300:])
                self.buffer += chunk
        data, self.buffer = self.buffer[: end + len(marker)], self.buffer[end + len(marker) :]
        return data

    async def login(self, user: str, resource: str) -> None:
        token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode())
        self.writer.write(
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + token + b"</auth>"
        )
        await self.until(b"<success")
        self.writer.write(HEADER)
        await self.until(b"</stream:features>")
        self.writer.write(
            b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>"
            + resource.encode()
            + b"</resource></bind></iq>"
        )
        await self.until(b"</iq>")

    def close(self) -> None:
        self.writer.transport.abort()


@contextlib.asynccontextmanager
async def logged_in(port: int, user: str) -> AsyncIterator[Raw]:
    raw = await Raw.open(port)
    await raw.login(user, "bench")
    try:
        yield raw
    finally:
        raw.close()


# -- item 1: distinct names before authentication -----------------------------------------------------------


def hostile_stanza(size: int) -> bytes:
    """About `size` bytes of element and attribute names nobody used before."""
    tag = secrets.token_hex(6).encode()
    count = size // 40
    attributes = b" ".join(b"a%s%d='1'" % (tag, n) for n in range(count // 2))
    children = b"".join(b"<e%s%d/>" % (tag, n) for n in range(count // 2))
    return b"<iq type='get' id='x' " + attributes + b">" + children + b"</iq>"


async def hostile(port: int, size: int) -> None:
    with contextlib.suppress(OSError, EOFError, TimeoutError):
        raw = await Raw.open(port)
        raw.writer.write(hostile_stanza(size))
        with contextlib.suppress(OSError):
            await raw.writer.drain()
        async with asyncio.timeout(30):
            while await raw.reader.read(65536):
                pass
        raw.close()


async def names(port: int, pid: int, connections: int, size: int, waves: int) -> None:
    """Waves of hostile connections: memory that is given back levels off, memory kept for good grows."""
    before = rss_mib(pid)
    print(
        f"  {waves} waves of {connections} unauthenticated connections, "
        f"each sending {size / 1000:.0f} kB of new names"
    )
    print(f"  RSS before: {before:.0f} MiB")
    for wave in range(1, waves + 1):
        for start in range(0, connections, 50):
            await asyncio.gather(*(hostile(port, size) for _ in range(min(50, connections - start))))
        await asyncio.sleep(5)
        grown = rss_mib(pid) - before
        print(
            f"  5 s after wave {wave}: +{grown:.1f} MiB, "
            f"{grown * 1024 / (connections * wave):.1f} KiB per hostile connection so far"
        )


# -- item 3: one client floods, a pair chats ---------------------------------------------------------------


async def flood(port: int, pid: int, duration: float) -> None:
    sent = 0
    async with (
        logged_in(port, "flood") as flooder,
        logged_in(port, "sink") as sink,
        logged_in(port, "alice") as alice,
        logged_in(port, "bob") as bob,
    ):
        received = 0
        latencies: list[float] = []
        pings: dict[str, float] = {}

        async def drain_sink() -> None:
            nonlocal received
            while chunk := await sink.reader.read(1 << 20):
                received += chunk.count(b"</message>")

        async def read_bob() -> None:
            while chunk := await bob.reader.read(65536):
                for stanza_id in re.findall(rb"id=[\"'](p\d+)[\"']", chunk):
                    if (stamp := pings.pop(stanza_id.decode(), None)) is not None:
                        latencies.append(time.monotonic() - stamp)

        async def send_flood() -> None:
            nonlocal sent
            batch = b"".join(
                b"<message to='sink@localhost/bench' type='chat'><body>flood %d</body></message>" % n
                for n in range(100)
            )
            while True:
                flooder.writer.write(batch)
                await flooder.writer.drain()
                sent += 100

        tasks = [asyncio.create_task(job()) for job in (drain_sink, read_bob)]
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        tasks.append(asyncio.create_task(send_flood()))
        n = 0
        while time.monotonic() - started < duration:
            pings[f"p{n}"] = time.monotonic()
            alice.writer.write(
                b"<message to='bob@localhost/bench' type='chat' id='p%d'><body>hi</body></message>" % n
            )
            n += 1
            await asyncio.sleep(0.05)
        cpu = cpu_seconds(pid) - cpu_before
        elapsed = time.monotonic() - started
        delivered = received
        await asyncio.sleep(2.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    missed = len(pings)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan")
    print(f"  one client floods messages for {elapsed:.1f} s; another pair chats at 20 messages/s")
    print(
        f"  flood: {sent / elapsed:.0f} msg/s written by the client, "
        f"{delivered / elapsed:.0f} msg/s delivered"
    )
    print(f"  server CPU: {cpu:.1f} s in {elapsed:.1f} s ({cpu / elapsed:.2f} s per second of flood)")
    if latencies:
        print(
            f"  the pair: p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
            f"max {latencies[-1] * 1000:.1f} ms; {missed} of {n} not received within 2 s of the end"
        )


# -- item 4: a client that never acknowledges ---------------------------------------------------------------


async def never_acks(port: int, pid: int, messages: int, size: int) -> None:
    before = rss_mib(pid)
    async with logged_in(port, "sender") as sender, logged_in(port, "lazy") as lazy:
        lazy.writer.write(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        await lazy.until(b"<enabled")
        outcome = ["still connected"]

        async def read_lazy() -> None:  # reads everything, acknowledges nothing
            with contextlib.suppress(OSError):
                while chunk := await lazy.reader.read(1 << 20):
                    lazy.buffer = (lazy.buffer + chunk)[-4096:]
                    if b"<stream:error>" in lazy.buffer:
                        outcome[0] = "cut off: " + re.sub(
                            rb"\s+", b" ", lazy.buffer[lazy.buffer.find(b"<stream:error>") :]
                        )[:200].decode(errors="replace")

        reader = asyncio.create_task(read_lazy())
        body = b"x" * size
        peak = before
        for n in range(messages):
            sender.writer.write(
                b"<message to='lazy@localhost/bench' type='chat' id='m%d'><body>%s</body></message>"
                % (n, body)
            )
            await sender.writer.drain()
            if n % 50 == 0:
                peak = max(peak, rss_mib(pid))
        await asyncio.sleep(3)
        peak = max(peak, rss_mib(pid))
        held = rss_mib(pid)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    print(f"  {messages} messages of {size / 1000:.0f} kB to a client with stream management that never acks")
    print(
        f"  RSS {before:.0f} MiB before, peak {peak:.0f} MiB, {held:.0f} MiB 3 s after: "
        f"+{held - before:.0f} MiB held"
    )
    print(f"  the client: {outcome[0]}")


# -- the command --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--scenario", choices=SCENARIOS, action="append")
    parser.add_argument("--connections", type=int, default=400, help="hostile connections a wave (names)")
    parser.add_argument("--waves", type=int, default=3, help="waves of hostile connections (names)")
    parser.add_argument("--stanza-kb", type=int, default=230, help="kB of names each sends (names)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of flood (flood)")
    parser.add_argument("--messages", type=int, default=1000, help="messages to the lazy client (sm)")
    parser.add_argument("--message-kb", type=int, default=50, help="kB per message (sm)")
    args = parser.parse_args(argv)
    source = args.source.resolve()
    limits = knows(source, "LimitsSection")
    print(f"Nitro from {source} ({'with' if limits else 'without'} [limits])")
    for scenario in args.scenario or SCENARIOS:
        if scenario == "names":
            print("\nitem 1: distinct names before authentication")
            with server(source, (), {}) as (port, pid):
                asyncio.run(names(port, pid, args.connections, args.stanza_kb * 1000, args.waves))
        elif scenario == "flood":
            print("\nitem 3: a flooding client and a chatting pair (default settings, no archive)")
            no_archive: dict[str, dict[str, object]] = {"modules": {"disabled": ["mam"]}}
            with server(source, ("flood", "sink", "alice", "bob"), no_archive) as (port, pid):
                asyncio.run(flood(port, pid, args.duration))
        else:
            print("\nitem 4: unacknowledged stanzas (the sender unshaped, so that it can fill the queue)")
            extra: dict[str, dict[str, object]] = (
                {"limits": {"bytes_per_second": 0, "stanzas_per_second": 0}} if limits else {}
            )
            with server(source, ("sender", "lazy"), extra) as (port, pid):
                asyncio.run(never_acks(port, pid, args.messages, args.message_kb * 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
