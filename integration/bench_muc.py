"""Chatroom fan-out (a benchmark: it prints, it asserts nothing).

    python -m integration.bench_muc [--sizes 10 100 1000] [--messages 20]

Starts `nitro serve` (its own process) with the muc plugin in `process` mode (a third process), logs in
N raw loopback clients (integration/loadgen, no TLS), has them all join one room, then one occupant
sends M groupchat messages back to back. Every occupant receives each message (the sender's reflection
included): N*M deliveries. Prints occupant-deliveries per second (from the first send to the last
delivery) and the latency of each delivery (send to receipt: p50 and p99). Each message is archived
(SQL, SQLite here) before the room broadcasts it.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from integration.loadgen.accounts import PASSWORD
from integration.loadgen.client import LoginPlan, Stanza
from integration.loadgen.connection import Connection, connect
from integration.loadgen.process import running
from integration.loadgen.provision import provision_bulk

DOMAIN = "bench.localhost"
MUC = f"conference.{DOMAIN}"
SECRET = "bench secret"
_BODY = re.compile(rb"<body>m(\d+)</body>")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(directory: Path, port: int, plugin_port: int) -> Path:
    path = directory / "nitro.toml"
    path.write_text(
        "# Written by integration/bench_muc.py for one run.\n"
        f'[server]\ndomain = "{DOMAIN}"\n'
        f'[storage]\ndsn = "sqlite+aiosqlite:///{directory / "nitro.db"}"\n'
        f"[c2s]\nport = {port}\ndirect_tls_port = 0\nrequire_encryption = false\n"
        "allow_plain_without_tls = true\nidle_ping_after = 3600.0\nkeepalive_interval = 3600.0\n"
        f'[tls]\ncert = "{directory / "cert.pem"}"\nkey = "{directory / "key.pem"}"\n'
        "[auth]\nthrottle_failures = 1000000\n"
        "[limits]\nbytes_per_second = 0\nstanzas_per_second = 0\nmax_connections_per_address = 0\n"
        '[logging]\nlevel = "WARNING"\n'
        "[metrics]\nenabled = false\n"
        "[http]\nenabled = false\n"
        '[admin]\nsocket = ""\npid_file = ""\n'
        f"[plugins]\nport = {plugin_port}\n"
        f'[plugins.muc]\nmode = "process"\nsubdomain = "{MUC}"\nsecret = "{SECRET}"\n'
        "max_occupants = 100000\n"
    )
    return path


class Tally:
    def __init__(self) -> None:
        self.sent: dict[int, float] = {}
        self.latencies: list[float] = []
        self.last = 0.0
        self.joined = 0
        self.done = asyncio.Event()
        self.expected = 0

    def on_stanza(self, _connection: Connection, stanza: Stanza) -> None:
        if stanza.name == b"presence" and b'code="110"' in stanza.raw:
            self.joined += 1
            return
        if stanza.name != b"message":
            return
        found = _BODY.search(stanza.raw)
        if found is None:
            return
        now = time.perf_counter()
        self.latencies.append(now - self.sent[int(found[1])])
        self.last = now
        if len(self.latencies) >= self.expected:
            self.done.set()


async def measure(size: int, messages: int, port: int, names: list[str]) -> tuple[float, float, float]:
    tally = Tally()
    room = f"fanout{size}@{MUC}"
    connections: list[Connection] = []
    for start in range(0, size, 50):
        batch = names[start : start + 50]
        plans = [
            LoginPlan(DOMAIN, n, PASSWORD, mechanism="PLAIN", roster=False, presence=False) for n in batch
        ]
        connections += await asyncio.gather(
            *(
                connect("127.0.0.1", port, p, ssl_context=None, timeout=60, on_stanza=tally.on_stanza)
                for p in plans
            )
        )
    # the first joins without <x/> (an instant room, unlocked at once), the others ask for no history
    connections[0].send(f"<presence to='{room}/{names[0]}'/>".encode())
    for _ in range(600):
        if tally.joined >= 1:
            break
        await asyncio.sleep(0.05)
    # joins in waves of 50, each once the previous one is in (N joins cost N*N/2 presence broadcasts)
    for index, connection in enumerate(connections[1:], 1):
        connection.send(
            f"<presence to='{room}/{names[index]}'><x xmlns='http://jabber.org/protocol/muc'>"
            "<history maxstanzas='0'/></x></presence>".encode()
        )
        if index % 50 == 0 or index == size - 1:
            for _ in range(1200):  # at most a minute per wave
                if tally.joined >= index + 1:
                    break
                await asyncio.sleep(0.05)
    if tally.joined < size:
        print(f"  size {size}: only {tally.joined} occupants joined", file=sys.stderr)
    tally.expected = size * messages
    begin = time.perf_counter()
    sender = connections[0]
    for n in range(messages):
        tally.sent[n] = time.perf_counter()
        sender.send(f"<message to='{room}' type='groupchat'><body>m{n}</body></message>".encode())
    try:
        await asyncio.wait_for(tally.done.wait(), 120)
    except TimeoutError:
        print(f"  size {size}: only {len(tally.latencies)} of {tally.expected} deliveries", file=sys.stderr)
    elapsed = (tally.last or time.perf_counter()) - begin
    for connection in connections:
        connection.abort()
    latencies = sorted(tally.latencies)
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan")
    return len(latencies) / elapsed, p50, p99


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="*", default=[10, 100, 1000], help="room sizes")
    parser.add_argument("--messages", type=int, default=20, help="messages sent in each room (default 20)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nitro-bench-muc-") as temporary:
        directory = Path(temporary)
        port, plugin_port = free_port(), free_port()
        config = write_config(directory, port, plugin_port)
        names = [f"o{i:05d}" for i in range(sum(args.sizes))]  # fresh users for each room
        asyncio.run(
            provision_bulk(f"sqlite+aiosqlite:///{directory / 'nitro.db'}", DOMAIN, names, roster_size=0)
        )
        command = [sys.executable, "-m", "nitro", "--config", str(config), "serve"]
        print(f"{'occupants':>9} {'messages':>8} {'deliveries/s':>13} {'p50 ms':>8} {'p99 ms':>8}")
        with running(command, port=port, log=directory / "nitro.log", cwd=Path.cwd(), cpus=None):
            time.sleep(2.0)  # the plugin process connects to the listener
            first = 0
            for size in args.sizes:
                rate, p50, p99 = asyncio.run(measure(size, args.messages, port, names[first : first + size]))
                first += size
                print(f"{size:>9} {args.messages:>8} {rate:>13,.0f} {p50 * 1000:>8.1f} {p99 * 1000:>8.1f}")
        log = (directory / "nitro.log").read_text(errors="replace")
        if "Traceback" in log or "ERROR" in log or "WARNING" in log:
            print(log[-3000:], file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
