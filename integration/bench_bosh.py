"""Chat over BOSH against TCP: messages/s and latency percentiles, printed as a table (asserts nothing).

    python -m integration.bench_bosh --pairs 50 --rate 1000 --duration 10

One Nitro with /http-bind runs in a child process (this module with --serve, until http.py serves BOSH
from `nitro serve`); the clients run here: the load generator's TCP clients and integration/boshclient.py's
BOSH client, which batches what is queued into one request as browser clients do. Each pair sends
paced messages from sender to receiver; latency is from the send call to the receiver reading it.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from lxml import etree

from integration.boshclient import CLIENT, BoshClient, local
from integration.loadgen.accounts import PASSWORD, USER_FORMAT
from integration.loadgen.client import LoginPlan, Stanza
from integration.loadgen.connection import Connection, connect
from integration.loadgen.process import running
from integration.loadgen.stats import percentile

DOMAIN = "bench.test"
MODES = ("tcp -> tcp", "tcp -> bosh", "bosh -> tcp", "bosh -> bosh")
_STAMP = re.compile(rb"<body>(\d+) ([0-9.]+)</body>")


@dataclass
class Tally:
    sent: int = 0
    latencies: list[float] = field(default_factory=list)
    first_send: float = 0.0
    last_receipt: float = 0.0

    def received(self, text: bytes | str | None) -> None:
        found = _STAMP.search(text.encode() if isinstance(text, str) else text or b"")
        if found:
            now = time.monotonic()
            self.latencies.append(now - float(found[2]))
            self.last_receipt = now


# -- the server (child process) -----------------------------------------------------------------------


async def serve(config_path: Path, bosh_port: int) -> int:
    from nitro.config import load_config
    from nitro.server import running_server
    from nitro.transports import bosh

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with running_server(load_config(config_path)) as server:
        app = web.Application()
        bosh.add_routes(app, server)
        runner = web.AppRunner(app, shutdown_timeout=5.0, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", bosh_port).start()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
    return 0


def write_config(directory: Path, port: int) -> Path:
    path = directory / "nitro.toml"
    path.write_text(
        "# Written by integration/bench_bosh.py for one run.\n"
        f'[server]\ndomain = "{DOMAIN}"\n'
        f'[storage]\ndsn = "sqlite+aiosqlite:///{directory / "nitro.db"}"\n'
        f"[c2s]\nport = {port}\ndirect_tls_port = 0\nrequire_encryption = false\n"
        "allow_plain_without_tls = true\nidle_ping_after = 3600.0\nkeepalive_interval = 3600.0\n"
        f'[tls]\ncert = "{directory / "cert.pem"}"\nkey = "{directory / "key.pem"}"\n'
        "[auth]\nthrottle_failures = 1000000\n"
        '[modules]\ndisabled = ["mam"]\n'
        '[logging]\nlevel = "WARNING"\n'
        "[metrics]\nenabled = false\n"
        "[http]\nenabled = false\n"  # this module serves /http-bind itself, on its own port
    )
    return path


# -- the clients (this process) ------------------------------------------------------------------------


class Endpoint:
    """One logged-in user over TCP or BOSH, able to send a chat message and count what it receives."""

    def __init__(self, kind: str, name: str, tally: Tally) -> None:
        self.kind = kind
        self.name = name
        self.tally = tally
        self.tcp: Connection | None = None
        self.bosh: BoshClient | None = None
        self.reader: asyncio.Task[None] | None = None

    @property
    def jid(self) -> str:
        return f"{self.name}@{DOMAIN}/{'web' if self.kind == 'bosh' else 'load'}"

    async def login(self, port: int, http: aiohttp.ClientSession, url: str) -> None:
        if self.kind == "tcp":
            plan = LoginPlan(DOMAIN, self.name, PASSWORD, mechanism="PLAIN", roster=False)
            self.tcp = await connect(
                "127.0.0.1", port, plan, ssl_context=None, timeout=30.0, on_stanza=self._tcp_stanza
            )
            return
        self.bosh = BoshClient(http, url, DOMAIN, wait=30)
        await self.bosh.login(self.name, PASSWORD, "web")
        await self.bosh.send(f"<presence xmlns='{CLIENT}'/>")
        self.reader = asyncio.get_running_loop().create_task(self._bosh_reader(self.bosh))

    def _tcp_stanza(self, _connection: Connection, stanza: Stanza) -> None:
        if stanza.name == b"message":
            self.tally.received(stanza.raw)

    async def _bosh_reader(self, client: BoshClient) -> None:
        while True:
            message = await client.recv(lambda e: local(e) == "message", timeout=3600)
            self.tally.received(etree.tostring(message))

    async def send(self, to: str, seq: int) -> None:
        stamp = f"{seq} {time.monotonic():.6f}"
        text = f"<message xmlns='{CLIENT}' to='{to}' type='chat'><body>{stamp}</body></message>"
        if self.tcp is not None:
            self.tcp.send(text.encode())
        elif self.bosh is not None:
            await self.bosh.send(text)

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.tcp is not None:
            await self.tcp.close(5.0)
        if self.bosh is not None:
            await self.bosh.terminate()


async def measure(mode: str, pairs: int, rate: float, duration: float, port: int, url: str) -> Tally:
    sender_kind, receiver_kind = (part.strip() for part in mode.split("->"))
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        senders = [Endpoint(sender_kind, USER_FORMAT.format(2 * i), tally) for i in range(pairs)]
        receivers = [Endpoint(receiver_kind, USER_FORMAT.format(2 * i + 1), tally) for i in range(pairs)]
        try:
            for endpoint in [*receivers, *senders]:
                await endpoint.login(port, http, url)
            await asyncio.sleep(0.5)
            start = tally.first_send = time.monotonic()
            while (elapsed := time.monotonic() - start) < duration:
                while tally.sent < rate * elapsed:  # paced by the clock, not by sleep's accuracy
                    pair = tally.sent % pairs
                    await senders[pair].send(receivers[pair].jid, tally.sent)
                    tally.sent += 1
                await asyncio.sleep(0.005)
            deadline = time.monotonic() + 10
            while len(tally.latencies) < tally.sent and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # stragglers: a bounded poll of a counter
        finally:
            for endpoint in [*senders, *receivers]:
                try:
                    await endpoint.close()
                except Exception as error:  # a benchmark reports, it does not fail
                    print(f"  (closing {endpoint.name}: {error!r})", file=sys.stderr)
    return tally


def row(mode: str, tally: Tally) -> list[str]:
    span = max(tally.last_receipt - tally.first_send, 1e-9)
    p50, p99 = percentile(tally.latencies, 0.5), percentile(tally.latencies, 0.99)
    return [
        mode,
        str(tally.sent),
        str(len(tally.latencies)),
        f"{len(tally.latencies) / span:.0f}",
        "-" if p50 is None else f"{p50 * 1000:.1f}",
        "-" if p99 is None else f"{p99 * 1000:.1f}",
    ]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=50, help="sender/receiver pairs (default 50)")
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="messages per second in all (default 1000)"
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds of sending per mode (default 10)"
    )
    parser.add_argument("--modes", nargs="*", default=list(MODES), help=f"any of {', '.join(MODES)}")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the child process: serve a config
    parser.add_argument("--bosh-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        from nitro.observe.runtime import run

        return run(serve(args.serve, args.bosh_port))

    from integration.loadgen.provision import provision_bulk

    with tempfile.TemporaryDirectory(prefix="nitro-bench-bosh-") as temporary:
        directory = Path(temporary)
        port, bosh_port = free_port(), free_port()
        config = write_config(directory, port)
        names = [USER_FORMAT.format(i) for i in range(2 * args.pairs)]
        asyncio.run(
            provision_bulk(f"sqlite+aiosqlite:///{directory / 'nitro.db'}", DOMAIN, names, roster_size=0)
        )
        command = [
            sys.executable,
            "-m",
            "integration.bench_bosh",
            "--serve",
            str(config),
            "--bosh-port",
            str(bosh_port),
        ]
        rows = []
        with running(command, port=port, log=directory / "nitro.log", cwd=Path.cwd(), cpus=None):
            wait_for_port(bosh_port)
            url = f"http://127.0.0.1:{bosh_port}/http-bind"
            for mode in args.modes:
                tally = asyncio.run(measure(mode, args.pairs, args.rate, args.duration, port, url))
                rows.append(row(mode, tally))
    headers = ["mode", "sent", "received", "msg/s", "p50 ms", "p99 ms"]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    print(f"{args.pairs} pairs, {args.rate:g} msg/s offered for {args.duration:g} s per mode, loopback")
    for line in [headers, *rows]:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
