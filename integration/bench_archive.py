"""The archive's work alone, without sockets: CPU per chat message archived for its sender and its recipient
(nitro/modules/mam_archive.py's two hooks on the event loop, the writer's batches on a real SQLite file and
its writing thread), at a paced rate, as in `python -m integration.bench --scenario chat --archive`.

    python -m integration.bench_archive --rate 3000 --seconds 10 [--users 200] [--cpu 1]

Process CPU time (the loop and the SQLite thread), so other processes on the core matter less than to the
chat bench's wall-clock rates; pinned to one core like the server. Users message in pairs (u0 with u1, …).
To measure another tree with this file, put that tree first on PYTHONPATH and run this file by its path.
It prints figures and never judges them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import uvloop
from lxml import etree

from integration.loadgen.provision import provision_bulk
from nitro.config_sections import ArchiveSection
from nitro.modules.mam_archive import Archive
from nitro.storage.sql import open_sql_storage
from nitro.xmpp.jid import JID

DOMAIN = "localhost"
WARM_UP = 2000  # messages before the measurement (caches, the first pages of every index)


def chat(sender: int, recipient: int, n: int) -> etree._Element:
    """A message as the stream parser hands it over (the load generator's, stamped with 'from')."""
    raw = (
        f"<message xmlns='jabber:client' type='chat' to='u{recipient}@{DOMAIN}'"
        f" from='u{sender}@{DOMAIN}/bench' id='m{n}'><body>{n} {time.monotonic_ns()}</body></message>"
    )
    return etree.fromstring(raw.encode())


async def measure(rate: int, seconds: float, users: int, directory: Path) -> None:
    dsn = f"sqlite+aiosqlite:///{directory / 'nitro.db'}"
    await provision_bulk(dsn, DOMAIN, [f"u{i}" for i in range(users)], roster_size=0)
    async with open_sql_storage(dsn) as storage:
        config = types.SimpleNamespace(archive=ArchiveSection())  # the defaults `make run` has
        server: Any = types.SimpleNamespace(storage=storage, config=config, tiers=None, domain=DOMAIN)
        archive = Archive(server, types.SimpleNamespace(log=logging.getLogger("bench_archive")))  # type: ignore[arg-type]
        writer = asyncio.get_running_loop().create_task(archive.writer.run())
        senders = [JID.parse(f"u{i}@{DOMAIN}/bench") for i in range(users)]
        recipients = [JID.parse(f"u{i}@{DOMAIN}") for i in range(users)]

        async def paced(first: int, count: int) -> None:
            start = time.perf_counter()
            per_turn = max(1, rate // 1000)  # messages between two turns of the loop (about a millisecond)
            for n in range(count):
                sender = (first + n) % users
                stanza = chat(sender, sender ^ 1, first + n)
                event = types.SimpleNamespace(from_=senders[sender], to=recipients[sender ^ 1], stanza=stanza)
                await archive.on_outgoing(event)  # type: ignore[arg-type]
                await archive.on_incoming(event)  # type: ignore[arg-type]
                if (n + 1) % per_turn == 0:  # the writer's turns come as between a server's reads
                    await asyncio.sleep(max(0.0, start + (n + 1) / rate - time.perf_counter()))
            for user in recipients:  # every row committed
                await archive.writer.flush(user.local or "")

        await paced(0, WARM_UP)
        batches, count = archive.writer.batches, int(rate * seconds)
        cpu, wall = time.process_time(), time.perf_counter()
        await paced(WARM_UP, count)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
    batches = archive.writer.batches - batches
    print(
        f"{rate} msgs/s offered, {count / wall:,.0f} archived: {cpu / count * 1e6:.1f} µs of CPU per message"
        f" (2 rows), {batches} batches of {2 * count / max(batches, 1):.0f} rows on average"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=3000, help="messages per second offered")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=200, help="accounts, messaging in pairs (even)")
    parser.add_argument("--cpu", type=int, default=1, help="core to pin to (-1: no pinning)")
    args = parser.parse_args()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    with tempfile.TemporaryDirectory(prefix="nitro-bench-archive-") as directory:
        uvloop.run(measure(args.rate, args.seconds, args.users + args.users % 2, Path(directory)))


if __name__ == "__main__":
    main()
