"""Roster-load latency from each storage tier (a benchmark: it prints, it asserts nothing).

    python -m integration.bench_storage [--dsn DSN] [--redis URL ...] [--users 2000] [--reads 2000]

Gives N users rosters of 20 contacts in SQL (a fresh SQLite file unless --dsn), then times
`rosters.get` as the roster module awaits it: straight from SQL (no ring), from the ring (a node
whose cache holds nothing), and from the in-process cache (which still checks the generation in the
ring: one small MGET). Then a login storm at the storage level: every user's credentials, roster
and offline messages read by 200 concurrent tasks, as a login does, with cold tiers (a fresh key
prefix) and warm ones. Without --redis it starts three redis-servers of its own on free ports.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nitro.accounts import create_account
from nitro.config import parse_config
from nitro.storage.layered import LayeredStorage, open_storage
from nitro.storage.models import RosterItem

CONTACTS = 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_servers(directory: Path, count: int = 3) -> Iterator[list[str]]:
    """`count` throwaway redis-servers (no persistence) on free loopback ports."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (or pass --redis URL)")
    processes: list[subprocess.Popen[bytes]] = []
    urls = []
    try:
        for _ in range(count):
            port = _free_port()
            command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            processes.append(subprocess.Popen(command, cwd=directory, stdout=subprocess.DEVNULL))
            urls.append(f"redis://127.0.0.1:{port}/0")
        time.sleep(0.5)
        yield urls
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def _config(dsn: str, redis: list[str], *, cache_entries: int, prefix: str = "bench") -> Any:
    return parse_config(
        {
            "storage": {"dsn": dsn},
            "redis": {"instances": redis, "prefix": prefix},
            "cache": {"max_entries": cache_entries},
        }
    )


async def _login_storm(storage: LayeredStorage, users: list[str], concurrency: int = 200) -> str:
    """What a login reads from storage, for every user at once (bounded concurrency)."""
    gate = asyncio.Semaphore(concurrency)
    samples: list[float] = []

    async def login(user: str) -> None:
        async with gate:
            start = time.perf_counter()
            await storage.accounts.get_credentials(user)
            await storage.rosters.get(user)
            await storage.offline.list(user)
            samples.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(login(user) for user in users))
    elapsed = time.perf_counter() - start
    ordered = sorted(samples)
    p50, p99 = statistics.median(ordered) * 1e3, ordered[int(len(ordered) * 0.99)] * 1e3
    rate = len(users) / elapsed
    return f"{len(users)} logins in {elapsed:6.2f} s ({rate:7.0f}/s), p50 {p50:7.2f} ms p99 {p99:7.2f} ms"


async def _time_reads(storage: LayeredStorage, users: list[str], reads: int) -> list[float]:
    samples = []
    for _ in range(reads):
        user = random.choice(users)
        start = time.perf_counter()
        await storage.rosters.get(user)
        samples.append(time.perf_counter() - start)
    return samples


def _row(label: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered) * 1e3
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3
    return f"{label:<34} {p50:8.3f} {p99:8.3f} {len(samples) / sum(samples):10.0f}"


async def run(dsn: str, redis: list[str], users: int, reads: int) -> None:
    names = [f"user{i}" for i in range(users)]
    async with open_storage(_config(dsn, [], cache_entries=0)) as sql_only:
        if await sql_only.accounts.count() < users:
            for name in names:
                await create_account(sql_only, name, "benchmark password", iterations=4096)
                for contact in range(CONTACTS):
                    await sql_only.rosters.put(name, RosterItem(jid=f"c{contact}@bench", subscription="both"))
        print(f"{'roster load, 20 items':<34} {'p50 ms':>8} {'p99 ms':>8} {'loads/s':>10}")
        print(_row("SQL only (no ring)", await _time_reads(sql_only, names, reads)))
    async with open_storage(_config(dsn, redis, cache_entries=0)) as ring_only:
        await _time_reads(ring_only, names, users * 2)  # fill the ring
        print(_row("ring hit (cache disabled)", await _time_reads(ring_only, names, reads)))
    async with open_storage(_config(dsn, redis, cache_entries=100_000)) as cached:
        await _time_reads(cached, names, users * 4)
        print(_row("cache hit (generation checked)", await _time_reads(cached, names, reads)))
        print(f"cache stats {cached.tiers.cache.stats}")
    print("login storm (credentials, roster, offline; 200 concurrent):")
    async with open_storage(_config(dsn, [], cache_entries=0)) as sql_only:
        print(f"  SQL only          {await _login_storm(sql_only, names)}")
    async with open_storage(_config(dsn, redis, cache_entries=100_000, prefix="storm")) as ring:
        print(f"  ring, cold        {await _login_storm(ring, names)}")
        print(f"  ring, warm        {await _login_storm(ring, names)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", help="SQL DSN (default: a fresh SQLite file)")
    parser.add_argument("--redis", action="append", default=[], help="ring instance URL (repeat)")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as directory:
        dsn = args.dsn or f"sqlite+aiosqlite:///{directory}/bench.db"
        if args.redis:
            asyncio.run(run(dsn, args.redis, args.users, args.reads))
            return
        with redis_servers(Path(directory)) as urls:
            asyncio.run(run(dsn, urls, args.users, args.reads))


if __name__ == "__main__":
    main()
