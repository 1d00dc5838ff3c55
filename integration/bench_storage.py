"""Storage benchmark: where a roster load is served from, and a login storm on each storage layout.

    python -m integration.bench_storage
    python -m integration.bench_storage --users 2000 --samples 2000 --layouts sqlite,mariadb,mariadb+ring

Part 1, roster loads: the same 20-contact rosters read through Nitro's layered storage
(`rosters.get`, as the roster module awaits it) with the answer coming from SQLite, from MariaDB,
from the Redis ring (in-process cache off) and from the in-process cache (which still checks the
user's generation key in the ring: one small MGET): p50/p99 per tier.
Part 2, login storms: the load generator's login scenario (SCRAM-SHA-1, rosters of 20) against a
Nitro process on SQLite, on MariaDB alone and on MariaDB behind a three-instance Redis ring, each
twice: cold (a fresh process and empty Redis) and warm (the same process again, caches filled).

Everything runs on loopback: three `redis-server` processes of its own on free ports, and a fresh
database on the machine's MariaDB (127.0.0.1:3306, root; --mariadb to change), dropped at the end.
It prints figures and never judges them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

from integration.bench import table
from integration.bench_servers import _toml, free_port
from integration.loadgen.accounts import ITERATIONS, PASSWORD, USER_FORMAT
from integration.loadgen.process import running
from integration.loadgen.provision import provision_bulk
from integration.loadgen.scenarios import Result, Settings, plan_cores, run_scenario
from integration.loadgen.stats import percentile
from integration.loadgen.worker import Target
from integration.redis_servers import RedisServer, start_servers

DOMAIN = "localhost"
ROSTER = 20
LAYOUTS = ("sqlite", "mariadb", "mariadb+ring")
REDIS_INSTANCES = 3


# --- the servers under the storage ------------------------------------------------------------------


@contextlib.contextmanager
def redis_servers(directory: Path, count: int) -> Iterator[list[RedisServer]]:
    """`count` redis-servers of our own on free loopback ports; stopped by pid at the end."""
    servers: list[RedisServer] = []
    try:
        servers = start_servers(directory, count)
        yield servers
    finally:
        for server in servers:
            server.stop()


@contextlib.contextmanager
def mariadb_database(server: str) -> Iterator[str]:
    """A fresh database on the MariaDB at `server` (host:port, root), dropped when the block ends."""
    host, _, port = server.rpartition(":")
    name = f"nitro_bench_{secrets.token_hex(4)}"
    client = ["mariadb", "-h", host, "-P", port, "-u", "root", "--protocol=TCP", "-e"]
    subprocess.run([*client, f"CREATE DATABASE {name} CHARACTER SET utf8mb4"], check=True)
    try:
        yield f"mysql+asyncmy://root@{host}:{port}/{name}"
    finally:
        subprocess.run([*client, f"DROP DATABASE IF EXISTS {name}"], check=False)


# --- part 1: roster loads per tier ------------------------------------------------------------------


async def _timed(samples: int, names: Sequence[str], read: Callable[[str], Awaitable[object]]) -> list[float]:
    durations: list[float] = []
    for index in range(samples):
        name = names[index % len(names)]
        started = time.perf_counter()
        await read(name)
        durations.append(time.perf_counter() - started)
    return durations


def _row(label: str, durations: Sequence[float]) -> list[str]:
    p50, p99 = percentile(durations, 0.50), percentile(durations, 0.99)
    return [
        label,
        f"{len(durations):,}",
        "-" if p50 is None else f"{p50 * 1e6:,.0f}",
        "-" if p99 is None else f"{p99 * 1e6:,.0f}",
    ]


async def roster_tiers(
    sqlite_dsn: str, mariadb_dsn: str, redis_urls: Sequence[str], names: Sequence[str], samples: int
) -> list[list[str]]:
    """p50/p99 of `rosters.get` served by each tier, through the same layered storage the server uses."""
    from nitro.config import Config, parse_config
    from nitro.storage.layered import open_storage

    def config(dsn: str, ring: Sequence[str], cache_entries: int, prefix: str) -> Config:
        sections = {"storage": {"dsn": dsn}, "cache": {"max_entries": cache_entries}}
        return parse_config({**sections, "redis": {"instances": list(ring), "prefix": prefix}})

    rows: list[list[str]] = []
    for label, dsn in (
        ("SQLite (no ring, no cache)", sqlite_dsn),
        ("MariaDB (no ring, no cache)", mariadb_dsn),
    ):
        async with open_storage(config(dsn, [], 0, "bench")) as storage:
            await _timed(len(names), names, storage.rosters.get)  # connections open, pages in memory
            rows.append(_row(label, await _timed(samples, names, storage.rosters.get)))
    async with open_storage(config(mariadb_dsn, redis_urls, 0, "tiers")) as storage:
        await _timed(len(names), names, storage.rosters.get)  # every roster into the ring
        rows.append(_row("Redis ring (cache off)", await _timed(samples, names, storage.rosters.get)))
    async with open_storage(config(mariadb_dsn, redis_urls, 1_000_000, "tiers")) as storage:
        await _timed(len(names), names, storage.rosters.get)  # every roster into the cache
        label = "in-process cache (generation checked in the ring)"
        rows.append(_row(label, await _timed(samples, names, storage.rosters.get)))
    return rows


# --- part 2: login storms ---------------------------------------------------------------------------


def _config_text(sections: dict[str, dict[str, object]]) -> str:
    text = "# Written by integration/bench_storage.py for one benchmark run.\n"
    for name, values in sections.items():
        text += f"\n[{name}]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in values.items())
    return text


def server_config(directory: Path, port: int, dsn: str, redis_urls: Sequence[str]) -> Path:
    sections: dict[str, dict[str, object]] = {
        "server": {"domain": DOMAIN},
        "storage": {"dsn": dsn},
        "c2s": {
            "host": "127.0.0.1",
            "port": port,
            "direct_tls_port": 0,
            "backlog": 4096,
            "require_encryption": False,
            "allow_plain_without_tls": True,
            "negotiation_timeout": 300.0,
            "idle_ping_after": 3600.0,
            "keepalive_interval": 3600.0,
        },
        "tls": {"cert": str(directory / "cert.pem"), "key": str(directory / "key.pem"), "generate": True},
        "auth": {"throttle_failures": 1_000_000, "scram_iterations": ITERATIONS},
        "registration": {"open": False},
        "modules": {"disabled": ["mam"]},
        "logging": {"level": "WARNING"},
        # login storms of thousands of clients from loopback, unshaped
        "limits": {"bytes_per_second": 0, "stanzas_per_second": 0, "max_connections_per_address": 0},
    }
    if redis_urls:
        sections["redis"] = {"instances": list(redis_urls)}
    path = directory / "nitro.toml"
    path.write_text(_config_text(sections))
    return path


def login_storms(
    layout: str, directory: Path, dsn: str, ring: Sequence[RedisServer], users: int, timeout: float
) -> tuple[Result, Result]:
    """Cold then warm login storm of `users` clients against one Nitro process on this layout."""
    cores = plan_cores(True)
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = server_config(directory, port, dsn, [server.url for server in ring])
    for server in ring:
        server.flush()  # cold: nothing cached from an earlier layout
    command = [sys.executable, "-m", "nitro", "--config", str(config), "serve"]
    cold, warm = Result(f"{layout}, cold"), Result(f"{layout}, warm")
    settings = Settings(duration=timeout)
    with running(
        command, port=port, log=directory / "nitro.log", cwd=directory, cpus=cores.server
    ) as process:
        target = Target("127.0.0.1", port, DOMAIN, PASSWORD, "SCRAM-SHA-1", False, None, True)
        run_scenario("login", settings, target, users, process.pid, cores, cold)
        run_scenario("login", settings, target, users, process.pid, cores, warm)
    return cold, warm


# --- command line -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m integration.bench_storage",
        description=(
            "Roster-load latency from the in-process cache, the Redis ring and MariaDB, and login storms "
            "(cold and warm caches) on SQLite, MariaDB and MariaDB + Redis ring. Loopback only; prints "
            "figures, judges nothing."
        ),
    )
    parser.add_argument("--users", type=int, default=2000, help="accounts, each with a roster of 20")
    parser.add_argument("--samples", type=int, default=2000, help="roster loads timed per tier")
    parser.add_argument(
        "--layouts", default=",".join(LAYOUTS), help=f"comma-separated subset of {', '.join(LAYOUTS)}"
    )
    parser.add_argument("--mariadb", default="127.0.0.1:3306", help="MariaDB server (root, no password)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a login storm may take")
    parser.add_argument("--skip-tiers", action="store_true", help="only the login storms")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    layouts = [layout.strip() for layout in args.layouts.split(",") if layout.strip()]
    unknown = set(layouts) - set(LAYOUTS)
    if unknown or args.users < 2 or args.samples < 1:
        build_parser().error(f"bad --layouts {sorted(unknown)} or --users/--samples too small")
    host = args.mariadb.rpartition(":")[0]
    if host not in ("127.0.0.1", "localhost", "::1"):
        build_parser().error("--mariadb must be on loopback")
    names = [USER_FORMAT.format(i) for i in range(args.users)]
    with (
        tempfile.TemporaryDirectory(prefix="nitro-bench-storage-") as temporary,
        mariadb_database(args.mariadb) as mariadb_dsn,
        redis_servers(Path(temporary), REDIS_INSTANCES) as ring,
    ):
        base = Path(temporary)
        sqlite_dsn = f"sqlite+aiosqlite:///{base / 'nitro.db'}"
        started = time.monotonic()
        for dsn in (sqlite_dsn, mariadb_dsn):
            asyncio.run(provision_bulk(dsn, DOMAIN, names, roster_size=ROSTER))
        print(
            f"provisioned {args.users:,} users with rosters of {ROSTER} in SQLite and MariaDB "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )
        if not args.skip_tiers:
            urls = [server.url for server in ring]
            rows = asyncio.run(roster_tiers(sqlite_dsn, mariadb_dsn, urls, names, args.samples))
            print(f"\n== roster load ({ROSTER} contacts), rosters.get through the layered storage ==")
            print(table(["served from", "loads", "p50 µs", "p99 µs"], rows), flush=True)
        results: list[Result] = []
        for layout in layouts:
            dsn = sqlite_dsn if layout == "sqlite" else mariadb_dsn
            servers = ring if layout.endswith("+ring") else []
            print(f"\nlogin storms on {layout}: {args.users:,} clients, cold then warm", flush=True)
            results.extend(login_storms(layout, base / layout, dsn, servers, args.users, args.timeout))
        metrics = list(dict.fromkeys(name for r in results for name in r.rows))
        rows = [[r.server, *(_cell(r.rows.get(m)) for m in metrics)] for r in results]
        print(f"\n== login storm: {args.users:,} clients, SCRAM-SHA-1, plain TCP, rosters of {ROSTER} ==")
        print(table(["layout", *metrics], rows))
        for result in results:
            for note in dict.fromkeys(result.notes):
                print(f"  note ({result.server}): {note}")
    return 0


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:.1f}"


if __name__ == "__main__":
    sys.exit(main())
