"""Chat over WebSocket (RFC 7395) against chat over TCP on the same Nitro: messages/s delivered and latency.

    python -m integration.bench_web --pairs 50 --rates 1000,2000,4000 --duration 10
    python -m integration.bench_web --transports "websocket>tcp,tcp>websocket"   # mixed: who is slower

One Nitro runs as a child process (pinned to one core, the load to another when there are two). For each
transport, `pairs` senders each write to one receiver's full JID at an equal share of the offered rate;
latency is from the send to the receipt of each message. Both transports are plaintext on loopback (the
WebSocket counts as encrypted there; TCP runs with require_encryption off), so framing is what differs.
It prints figures and never judges them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from lxml import etree

import nitro
from integration.bench import table
from integration.bench_servers import _toml, free_port
from integration.loadgen.accounts import PASSWORD
from integration.loadgen.process import running, wait_for_port
from integration.loadgen.provision import provision_bulk
from integration.loadgen.stats import own_cpu_seconds, percentile, process_cpu_seconds
from nitro.xmpp import ns
from nitro.xmpp.xmlstream import StanzaReceived, XMLStreamParser

DOMAIN = "bench.test"
TRANSPORTS = ("tcp", "websocket")

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)
_BODY = f"{{{ns.CLIENT}}}body"


@dataclass
class Tally:
    """What the receivers saw in one step."""

    latencies: list[float] = field(default_factory=list)
    received: int = 0


class Peer:
    """One logged-in client; `tally` counts the chat messages it receives."""

    jid = ""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    async def login(self, user: str) -> None:
        raise NotImplementedError

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def received(self, element: etree._Element) -> None:
        text = element.findtext(_BODY)
        if text:
            self.tally.received += 1
            self.tally.latencies.append(time.perf_counter() - float(text))


def _auth(user: str) -> bytes:
    plain = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    return f"<auth xmlns='{ns.SASL}' mechanism='PLAIN'>{plain}</auth>".encode()


_BIND = f"<iq type='set' id='b'><bind xmlns='{ns.BIND}'><resource>bench</resource></bind></iq>".encode()


class TcpPeer(Peer):
    """RFC 6120 over plain TCP."""

    def __init__(self, tally: Tally, port: int) -> None:
        super().__init__(tally)
        self.port = port
        self.parser = XMLStreamParser()
        self.pending: list[etree._Element] = []

    async def _next(self) -> etree._Element:
        while not self.pending:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("server closed the stream")
            self.pending += [e.element for e in self.parser.feed(data) if isinstance(e, StanzaReceived)]
        return self.pending.pop(0)

    async def _open(self) -> None:
        header = (
            f"<stream:stream xmlns='jabber:client' xmlns:stream='{ns.STREAM}' to='{DOMAIN}' version='1.0'>"
        )
        self.parser.reset()
        self.writer.write(header.encode())
        await self._next()  # features

    async def login(self, user: str) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        await self._open()
        self.writer.write(_auth(user))
        await self._next()  # success
        await self._open()
        self.writer.write(_BIND)
        self.jid = (await self._next()).findtext(f".//{{{ns.BIND}}}jid") or ""
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                self.received(await self._next())

    async def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def close(self) -> None:
        self.task.cancel()
        self.writer.close()


class WebSocketPeer(Peer):
    """RFC 7395 over plain HTTP (aiohttp's client)."""

    def __init__(self, tally: Tally, session: aiohttp.ClientSession, url: str) -> None:
        super().__init__(tally)
        self.session = session
        self.url = url

    async def _next(self) -> etree._Element:
        message = await self.ws.receive()
        if message.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"WebSocket ended: {message.type.name}")
        return etree.fromstring(message.data.encode(), _PARSER)

    async def _open(self) -> None:
        await self.ws.send_str(f"<open xmlns='{ns.FRAMING}' to='{DOMAIN}' version='1.0'/>")
        await self._next()  # <open/>
        await self._next()  # features

    async def login(self, user: str) -> None:
        self.ws = await self.session.ws_connect(self.url, protocols=("xmpp",))
        await self._open()
        await self.ws.send_str(_auth(user).decode())
        await self._next()  # success
        await self._open()
        await self.ws.send_str(_BIND.decode().replace("<iq ", "<iq xmlns='jabber:client' ", 1))
        self.jid = (await self._next()).findtext(f".//{{{ns.BIND}}}jid") or ""
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                self.received(await self._next())

    async def send(self, data: bytes) -> None:
        await self.ws.send_str(data.decode())

    async def close(self) -> None:
        self.task.cancel()
        await self.ws.close()


def _message(to: str, websocket: bool) -> bytes:
    xmlns = " xmlns='jabber:client'" if websocket else ""
    return f"<message{xmlns} to='{to}' type='chat'><body>{time.perf_counter()!r}</body></message>".encode()


@dataclass(frozen=True, slots=True)
class Step:
    transport: str
    offered: int
    sent: int
    delivered_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    lost: int
    server_cpu_s: float | None
    loadgen_cpu_s: float


async def run_step(
    senders: Sequence[Peer], receivers: Sequence[Peer], tally: Tally, rate: int, duration: float, pid: int
) -> tuple[int, float, float | None, float]:
    """Send at `rate` messages/s in total for `duration` s; wait (bounded) for stragglers."""
    websocket = isinstance(senders[0], WebSocketPeer)
    interval = len(senders) / rate
    cpu_before = process_cpu_seconds(pid)
    own_before = own_cpu_seconds()
    start = time.perf_counter()
    sent = 0

    async def sender(peer: Peer, to: str, offset: float) -> None:
        nonlocal sent
        due = start + offset
        while due < start + duration:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await peer.send(_message(to, websocket))
            sent += 1
            due += interval

    await asyncio.gather(
        *(
            sender(s, r.jid, i * interval / len(senders))
            for i, (s, r) in enumerate(zip(senders, receivers, strict=True))
        )
    )
    deadline = time.perf_counter() + 5.0
    while tally.received < sent and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - start
    cpu_after = process_cpu_seconds(pid)
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return sent, elapsed, cpu, own_cpu_seconds() - own_before


async def measure(
    index: int,
    transport: str,
    ports: tuple[int, int],
    pairs: int,
    rates: Sequence[int],
    duration: float,
    pid: int,
) -> list[Step]:
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=0)  # each WebSocket holds a connection for good
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"ws://127.0.0.1:{ports[1]}/xmpp-websocket"
        kinds = transport.split(">") * 2 if ">" in transport else [transport, transport]  # sender>receiver
        peers: list[Peer] = [
            WebSocketPeer(tally, session, url)
            if kinds[i // pairs] == "websocket"
            else TcpPeer(tally, ports[0])
            for i in range(2 * pairs)
        ]
        offset = 2 * pairs * index  # fresh accounts for each run
        await asyncio.gather(*(peer.login(f"user{offset + i}") for i, peer in enumerate(peers)))
        senders, receivers = peers[:pairs], peers[pairs:]
        steps = []
        try:
            for rate in rates:
                tally.latencies.clear()
                tally.received = 0
                sent, elapsed, cpu, own = await run_step(senders, receivers, tally, rate, duration, pid)
                ms = [1000 * latency for latency in tally.latencies]
                steps.append(
                    Step(
                        transport,
                        rate,
                        sent,
                        tally.received / elapsed,
                        percentile(ms, 0.5),
                        percentile(ms, 0.99),
                        max(ms, default=None),
                        sent - tally.received,
                        cpu,
                        own,
                    )
                )
        finally:
            await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)
    return steps


def config_text(directory: Path, ports: tuple[int, int], *, uvloop: bool) -> str:
    sections: dict[str, dict[str, object]] = {
        "server": {"domain": DOMAIN},
        "storage": {"dsn": f"sqlite+aiosqlite:///{directory / 'nitro.db'}"},
        "c2s": {
            "port": ports[0],
            "direct_tls_port": 0,
            "require_encryption": False,
            "allow_plain_without_tls": True,
            "idle_ping_after": 3600.0,
            "keepalive_interval": 3600.0,
        },
        "http": {"port": ports[1], "tls_port": 0, "web_client": False},
        "tls": {"cert": str(directory / "cert.pem"), "key": str(directory / "key.pem")},
        "auth": {"throttle_failures": 1_000_000},
        "registration": {"open": False},
        "modules": {"disabled": ["mam"]},
        "logging": {"level": "WARNING"},
        "metrics": {"enabled": False},
        "runtime": {"uvloop": uvloop},
    }
    text = "# Written by integration/bench_web.py for one benchmark run.\n"
    for name, values in sections.items():
        text += f"\n[{name}]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in values.items())
    return text


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=50, help="sender/receiver pairs per transport")
    parser.add_argument("--rates", default="1000,2000,4000", help="offered messages/s, comma-separated steps")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per step")
    parser.add_argument(
        "--transports",
        default=",".join(TRANSPORTS),
        help="runs in order, comma-separated: tcp, websocket, or SENDERS>RECEIVERS such as websocket>tcp",
    )
    parser.add_argument("--no-uvloop", action="store_true", help="the server on asyncio's own event loop")
    args = parser.parse_args(argv)
    rates = [int(rate) for rate in args.rates.split(",")]
    transports = args.transports.split(",")
    cpus = os.sched_getaffinity(0)
    server_cpus = frozenset(sorted(cpus)[:1]) if len(cpus) >= 2 else None
    with tempfile.TemporaryDirectory(prefix="nitro-bench-web-") as temporary:
        directory = Path(temporary)
        ports = (free_port(), free_port())
        config = directory / "nitro.toml"
        config.write_text(config_text(directory, ports, uvloop=not args.no_uvloop))
        names = [f"user{i}" for i in range(2 * args.pairs * len(transports))]
        asyncio.run(
            provision_bulk(f"sqlite+aiosqlite:///{directory / 'nitro.db'}", DOMAIN, names, roster_size=0)
        )
        command = [sys.executable, "-m", "nitro", "--config", str(config), "serve"]
        source = str(Path(nitro.__file__).resolve().parent.parent)  # the Nitro this script imports
        env = {**os.environ, "PYTHONPATH": source}
        with running(
            command, port=ports[0], log=directory / "nitro.log", cwd=directory, cpus=server_cpus, env=env
        ) as server:
            wait_for_port(ports[1], server, directory / "nitro.log")
            if server_cpus is not None:
                os.sched_setaffinity(0, cpus - server_cpus)
            steps = []
            for index, transport in enumerate(transports):
                steps += asyncio.run(
                    measure(index, transport, ports, args.pairs, rates, args.duration, server.pid)
                )
    print(
        f"Chat, {args.pairs} pairs per transport, {args.duration:g} s per step, "
        f"server on {'core ' + str(min(server_cpus)) if server_cpus else 'any core'}:"
    )
    headers = [
        "transport",
        "offered/s",
        "delivered/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "lost",
        "server CPU s",
        "load CPU s",
    ]
    rows = [
        [
            s.transport,
            str(s.offered),
            fmt(s.delivered_per_s, 0),
            fmt(s.p50_ms, 2),
            fmt(s.p99_ms, 2),
            fmt(s.max_ms, 1),
            str(s.lost),
            fmt(s.server_cpu_s, 2),
            fmt(s.loadgen_cpu_s, 2),
        ]
        for s in steps
    ]
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
