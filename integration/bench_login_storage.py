"""A login's storage work alone, without sockets: CPU per login of its reads and per logout of its
last-activity write, through the layered storage as the server builds it (timing proxy, fair shares, tiers)
on a real SQLite file.

    python -m integration.bench_login_storage --users 2000 --passes 6
    taskset -c 0 python -m integration.bench_login_storage   # pinned: other processes matter less

Reads per login: credentials, block list (twice, as a login asks), roster, offline messages, and the items
of its contacts' rosters for its presence (rosters of 20). "cold": the cache cleared before each pass (a
first login); "warm": the same again (a re-login). Writes: waves of K concurrent last-activity writes (K
logouts at once). Process CPU time (the writing connection's thread included); it prints figures and
never judges them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import tempfile
import time
from collections.abc import Sequence

from integration.populate import contacts, populate, username
from nitro.config import parse_config
from nitro.observe.metrics import Metrics
from nitro.storage.layered import LayeredStorage, open_storage
from nitro.storage.models import LastActivity
from nitro.storage.timed import timed_storage

ROSTER = 10  # contacts on each side: rosters of 20


async def _login_reads(storage: LayeredStorage, names: Sequence[str], rosters: Sequence[list[str]]) -> float:
    """CPU seconds per login for one pass of every user's reads."""
    started = time.process_time()
    for name, contact_names in zip(names, rosters, strict=True):
        await storage.accounts.get_credentials(name)
        await storage.blocklist.list(name)
        await storage.blocklist.list(name)
        await storage.rosters.get(name)
        await storage.offline.list(name)
        await storage.rosters.items_for(contact_names, f"{name}@localhost")
    return (time.process_time() - started) / len(names)


async def _logout_writes(storage: LayeredStorage, names: Sequence[str], at_once: int) -> float:
    """CPU seconds per write, `at_once` logouts writing together."""
    started = time.process_time()
    for first in range(0, len(names), at_once):
        now = datetime.datetime.now(datetime.UTC)
        wave = names[first : first + at_once]
        await asyncio.gather(*(storage.last.set(name, LastActivity(now, "")) for name in wave))
    return (time.process_time() - started) / len(names)


def _line(label: str, seconds: Sequence[float]) -> str:
    figures = " ".join(f"{value * 1e6:.0f}" for value in seconds)
    return f"{label}: {figures}  (min {min(seconds) * 1e6:.0f} µs)"


async def run(users: int, passes: int, waves: Sequence[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="nitro-bench-login-storage-") as directory:
        dsn = f"sqlite+aiosqlite:///{directory}/nitro.db"
        await populate(dsn, users, ROSTER)
        metrics = Metrics()
        config = parse_config({"storage": {"dsn": dsn}})
        async with open_storage(
            config, wrap_sql=lambda sql: timed_storage(sql, metrics.storage_call)
        ) as storage:
            names = [username(index) for index in range(users)]
            rosters = [
                [username(other) for other in contacts(index, users, ROSTER)] for index in range(users)
            ]
            cold: list[float] = []
            for number in range(passes + 1):
                storage.tiers.cache.clear()
                seconds = await _login_reads(storage, names, rosters)
                if number:  # the first pass brings the file's pages into memory
                    cold.append(seconds)
            print(_line("reads per login, cold", cold))
            warm = [await _login_reads(storage, names, rosters) for _ in range(passes)]
            print(_line("reads per login, warm", warm))
            for at_once in waves:
                written = [await _logout_writes(storage, names, at_once) for _ in range(3)]
                print(_line(f"last-activity write per logout, {at_once} at once", written))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.bench_login_storage", description=__doc__)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--passes", type=int, default=6, help="of the reads, cold and warm")
    parser.add_argument("--waves", default="1,2,8,100", help="logouts writing at once, comma-separated")
    args = parser.parse_args(argv)
    waves = [int(value) for value in args.waves.split(",") if value]
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(run(args.users, args.passes, waves))
    else:
        uvloop.run(run(args.users, args.passes, waves))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
