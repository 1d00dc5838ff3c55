"""TLS alone, without XMPP: what a server-side TLS connection costs on uvloop, by way of the event loop's SSL
protocol (`loop.start_tls`, what c2s used before) or of Nitro's own (nitro/transports/tls_layer.py).

    python -m integration.bench_tls --connections 2000 --trips 10000

A server process (uvloop, glibc's mmap threshold fixed as `make run` does unless --dynamic-mmap) accepts
connections that say "starttls", answers "proceed" and upgrades; the client (this process, on another core
when there are two) handshakes, makes three small exchanges on each connection and keeps them open. Printed
per mode: RSS, C heap in use and mmapped blocks per held connection (after `malloc_trim`), server CPU per
handshake, and server CPU per round trip (a short request answered by 2.4 kB). It prints figures and never
judges them.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import multiprocessing
import os
import ssl
import sys
import tempfile
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path

import uvloop

from integration.loadgen.stats import process_cpu_seconds
from nitro.observe.heap import fix_mmap_threshold, trim_now
from nitro.transports.tls import ensure_certificate, server_context
from nitro.transports.tls_layer import start_server_tls

MODES = ("loop", "nitro")
ANSWER = b"<iq type='result'>" + b"<item jid='contact@localhost' subscription='both'/>" * 46 + b"</iq>"
EXCHANGES = (b"<auth>xxxxxxxxxx</auth>", b"<response>yyyyyyyyyyyyy</response>", b"<iq><query/></iq>")
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


_MALLINFO2 = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (*_MALLINFO2, "keepcost")]


def memory() -> tuple[int, int, int]:
    """(RSS, C heap in use, mmapped blocks' size) in bytes, after a collection and a trim."""
    gc.collect()
    trim_now()
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return rss, int(info.uordblks), int(info.hblkhd)


class Echo(asyncio.Protocol):
    """Plain until "starttls", then TLS (by `mode`); answers every request with ANSWER."""

    def __init__(self, mode: str, context: ssl.SSLContext) -> None:
        self.mode = mode
        self.context = context
        self.transport: asyncio.Transport | None = None
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.upgraded:
            self.transport.write(ANSWER)
            return
        self.upgraded = True
        self.transport.write(b"proceed")
        if self.mode == "nitro":
            self.transport = start_server_tls(self.transport, self, self.context, 60.0)
        else:
            asyncio.get_running_loop().create_task(self._upgrade(self.transport))

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        self.transport = await loop.start_tls(transport, self, self.context, server_side=True)


def serve(mode: str, certificate: Path, key: Path, dynamic_mmap: bool, pipe: Connection) -> None:
    """The server process: its port on `pipe`, then one memory reading per request on it."""
    if not dynamic_mmap:
        fix_mmap_threshold(128 * 1024)

    async def accept() -> None:
        context = server_context(certificate, key)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Echo(mode, context), "127.0.0.1", 0)
        pipe.send(server.sockets[0].getsockname()[1])
        while await loop.run_in_executor(None, pipe.recv):
            pipe.send(memory())

    uvloop.run(accept())


async def connect(port: int, count: int, context: ssl.SSLContext) -> list[Stream]:
    held: list[Stream] = []
    gate = asyncio.Semaphore(50)

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"starttls")
            await reader.readexactly(len(b"proceed"))
            await writer.start_tls(context, server_hostname="localhost")
            for request in EXCHANGES:
                writer.write(request)
                await reader.readexactly(len(ANSWER))
            held.append((reader, writer))

    await asyncio.gather(*(one() for _ in range(count)))
    return held


async def trips(streams: list[Stream], total: int) -> None:
    """`total` round trips, spread over the held connections."""
    per = max(1, total // len(streams))

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(per):
            writer.write(b"<message><body>hello</body></message>")
            await reader.readexactly(len(ANSWER))

    await asyncio.gather(*(run(*stream) for stream in streams[: max(1, total // per)]))


async def measure(mode: str, args: argparse.Namespace, certificate: Path, key: Path) -> dict[str, float]:
    mine, theirs = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(mode, certificate, key, args.dynamic_mmap, theirs))
    server.start()
    assert server.pid is not None
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(server.pid, {1})
        os.sched_setaffinity(0, {0})
    port = mine.recv()
    context = ssl.create_default_context(cafile=str(certificate))
    try:
        for _reader, writer in await connect(port, 100, context):  # warm-up: the first allocations
            writer.close()
        await asyncio.sleep(1.0)
        mine.send(True)
        before = mine.recv()
        cpu_before = process_cpu_seconds(server.pid) or 0.0
        streams = await connect(port, args.connections, context)
        cpu_connected = process_cpu_seconds(server.pid) or 0.0
        await asyncio.sleep(2.0)
        mine.send(True)
        after = mine.recv()
        cpu_trips = process_cpu_seconds(server.pid) or 0.0
        await trips(streams, args.trips)
        cpu_end = process_cpu_seconds(server.pid) or 0.0
        for _reader, writer in streams:
            writer.close()
    finally:
        mine.send(False)
        server.join(10)
    count = args.connections
    return {
        "RSS per connection (KiB)": (after[0] - before[0]) / count / 1024,
        "C heap in use per connection (KiB)": (after[1] - before[1]) / count / 1024,
        "mmapped, not all touched (KiB)": (after[2] - before[2]) / count / 1024,
        "server CPU per handshake (ms)": (cpu_connected - cpu_before) / count * 1000,
        "server CPU per round trip (us)": (cpu_end - cpu_trips) / args.trips * 1e6,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--trips", type=int, default=10000)
    parser.add_argument("--modes", default=",".join(MODES), help="loop, nitro (comma-separated)")
    parser.add_argument("--dynamic-mmap", action="store_true", help="leave glibc's mmap threshold dynamic")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nitro-bench-tls-") as temporary:
        certificate, key = Path(temporary) / "cert.pem", Path(temporary) / "key.pem"
        ensure_certificate(certificate, key, "localhost")
        results = {mode: asyncio.run(measure(mode, args, certificate, key)) for mode in args.modes.split(",")}
    print(f"{args.connections} connections, {args.trips} round trips, {ssl.OPENSSL_VERSION}")
    print(f"  {'':38s}" + "".join(f"{mode:>10s}" for mode in results))
    for metric in next(iter(results.values())):
        print(f"  {metric:38s}" + "".join(f"{values[metric]:10.2f}" for values in results.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
