"""MAM query latency on a large archive (a benchmark: it prints, it asserts nothing).

    python -m integration.bench_mam --messages 1000000

Fills one user's archive in a fresh SQLite database with N messages across 50 contacts, then times
the queries a client makes: through the storage API (what the MAM module awaits), and end to end (a
slixmpp client's MAM query to a running Nitro, over STARTTLS on loopback, until the IQ result).
The fill uses the archive's own table in large transactions, the rows exactly as `append` writes them
(`append` alone commits each message with a full fsync: about a hundred a second on SQLite).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from nitro.accounts import create_account
from nitro.config import Config, parse_config
from nitro.modules.mam_archive import new_archive_id
from nitro.server import running_server
from nitro.storage.models import ArchiveQuery
from nitro.storage.protocols import ArchiveStore
from nitro.storage.schema import archive_messages
from nitro.storage.sql import create_engine
from nitro.storage.sql_base import Database, contact_keys

DOMAIN = "bench.localhost"
USER = "trader"
PASSWORD = "benchmark password"
T0 = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
STEP = datetime.timedelta(seconds=30)
BATCH = 20_000


async def bulk_fill(
    dsn: str,
    username: str,
    count: int,
    contacts: list[str],
    *,
    start: datetime.datetime = T0,
    step: datetime.timedelta = STEP,
) -> list[str]:
    """Archive `count` messages for `username` (round robin over `contacts`, `step` apart); their ids."""
    engine = create_engine(dsn)
    keys = {contact: contact_keys(contact) for contact in contacts}
    ids: list[str] = []
    try:
        db = Database(engine)
        for offset in range(0, count, BATCH):
            rows = []
            for n in range(offset, min(offset + BATCH, count)):
                contact = contacts[n % len(contacts)]
                raw, key = keys[contact]
                archive_id = new_archive_id()
                incoming = n % 2 == 0
                sender, recipient = (
                    (contact, f"{username}@{DOMAIN}") if incoming else (f"{username}@{DOMAIN}", contact)
                )
                stanza = (
                    f"<message xmlns='jabber:client' from='{sender}/phone' to='{recipient}' type='chat' "
                    f"id='m{n}'><body>Message number {n}: the quick brown fox jumps over the lazy dog."
                    f"</body><origin-id xmlns='urn:xmpp:sid:0' id='o{n}'/></message>"
                )
                rows.append(
                    {
                        "stanza_id": archive_id,
                        "with_key": key,
                        "with_jid": raw,
                        "timestamp": start + n * step,
                        "stanza": stanza.encode(),
                    }
                )
                ids.append(archive_id)
            async with db.writer.begin() as conn:
                account_id = await db.existing_account_id(conn, username)
                for row in rows:
                    row["account_id"] = account_id
                await conn.execute(insert(archive_messages), rows)
    finally:
        await engine.dispose()
    return ids


def bench_config(directory: Path) -> Config:
    return parse_config(
        {
            "server": {"domain": DOMAIN},
            "storage": {"dsn": f"sqlite+aiosqlite:///{directory}/bench.db"},
            "c2s": {"port": 0, "direct_tls_port": 0},
            "tls": {"cert": str(directory / "cert.pem"), "key": str(directory / "key.pem")},
            "archive": {"max_page_size": 250},
            "logging": {"level": "WARNING"},
            "metrics": {"port": 0},
        },
        base_dir=directory,
    )


Case = Callable[[int], Awaitable[Any]]


async def timed(case: Case, runs: int) -> tuple[float, float, float]:
    """p50, p99 and max in milliseconds over `runs` calls (after 5 warm-up calls)."""
    for run in range(5):
        await case(run)
    samples = []
    for run in range(runs):
        begin = time.perf_counter()
        await case(run)
        samples.append((time.perf_counter() - begin) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))], samples[-1]


def storage_cases(store: ArchiveStore, ids: list[str], contacts: list[str], page: int) -> dict[str, Case]:
    count = len(ids)
    middle = T0 + (count // 2) * STEP

    def query(build: Callable[[int], ArchiveQuery]) -> Case:
        async def run(n: int) -> Any:
            return await store.query(USER, build(n))

        return run

    return {
        "first page": query(lambda n: ArchiveQuery(limit=page)),
        "last page (empty <before/>)": query(lambda n: ArchiveQuery(before_id="", limit=page)),
        "with one contact, last page": query(
            lambda n: ArchiveQuery(with_jid=contacts[n % len(contacts)], before_id="", limit=page)
        ),
        "start/end window of one hour": query(
            lambda n: ArchiveQuery(start=middle, end=middle + datetime.timedelta(hours=1), limit=page)
        ),
        "after-id deep in the archive": query(
            lambda n: ArchiveQuery(after_id=ids[count // 2 + (n * 997) % (count // 3)], limit=page)
        ),
        "before-id deep, backward": query(
            lambda n: ArchiveQuery(before_id=ids[count // 2 + (n * 991) % (count // 3)], limit=page)
        ),
    }


def print_table(title: str, rows: dict[str, tuple[float, float, float]]) -> None:
    print(f"\n{title}")
    print(f"  {'query':<36} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for name, (p50, p99, worst) in rows.items():
        print(f"  {name:<36} {p50:>9.2f} {p99:>9.2f} {worst:>9.2f}")


async def end_to_end(config: Config, ids: list[str], contacts: list[str], page: int, runs: int) -> None:
    import slixmpp  # only the end-to-end part needs the client library
    from slixmpp.xmlstream import ET

    logging.getLogger("slixmpp").setLevel(logging.ERROR)
    async with running_server(config) as server:
        port = server.listeners[0].sockets[0].getsockname()[1]
        client = slixmpp.ClientXMPP(f"{USER}@{DOMAIN}", PASSWORD)
        for plugin in ("xep_0030", "xep_0059", "xep_0313"):
            client.register_plugin(plugin)
        client.ca_certs = config.path(config.tls.cert)
        client.enable_plaintext = False
        started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def on_start(_event: Any) -> None:
            if not started.done():
                started.set_result(True)

        client.add_event_handler("session_start", on_start)
        client.connect("127.0.0.1", port)
        await asyncio.wait_for(started, 30)
        count = len(ids)
        middle = T0 + (count // 2) * STEP

        def form(fields: dict[str, str]) -> str:
            inner = "".join(
                f"<field var='{var}'><value>{value}</value></field>" for var, value in fields.items()
            )
            return (
                "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
                f"<value>urn:xmpp:mam:2</value></field>{inner}</x>"
            )

        def query(build: Callable[[int], str]) -> Case:
            async def run(n: int) -> Any:
                iq: Any = client.make_iq_set()
                iq.xml.append(
                    ET.fromstring(f"<query xmlns='urn:xmpp:mam:2' queryid='b{n}'>{build(n)}</query>")
                )
                return await iq.send(timeout=60)

            return run

        rsm = f"<set xmlns='http://jabber.org/protocol/rsm'><max>{page}</max>"
        stamp = "%Y-%m-%dT%H:%M:%SZ"
        cases = {
            "first page": query(lambda n: f"{rsm}</set>"),
            "last page (empty <before/>)": query(lambda n: f"{rsm}<before/></set>"),
            "with one contact, last page": query(
                lambda n: form({"with": contacts[n % len(contacts)]}) + f"{rsm}<before/></set>"
            ),
            "start/end window of one hour": query(
                lambda n: (
                    form(
                        {
                            "start": middle.strftime(stamp),
                            "end": (middle + datetime.timedelta(hours=1)).strftime(stamp),
                        }
                    )
                    + f"{rsm}</set>"
                )
            ),
            "after-id deep in the archive": query(
                lambda n: f"{rsm}<after>{ids[count // 2 + (n * 997) % (count // 3)]}</after></set>"
            ),
            "before-id deep, backward": query(
                lambda n: f"{rsm}<before>{ids[count // 2 + (n * 991) % (count // 3)]}</before></set>"
            ),
        }
        results = {name: await timed(case, runs) for name, case in cases.items()}
        client.disconnect()
        print_table(f"end to end: slixmpp query → {page} result messages + IQ result, over TLS", results)


async def main(messages: int, runs: int, page: int, contacts_count: int, skip_e2e: bool) -> None:
    contacts = [f"contact{n}@{DOMAIN}" for n in range(contacts_count)]
    with tempfile.TemporaryDirectory(prefix="nitro-bench-") as tmp:
        directory = Path(tmp)
        config = bench_config(directory)
        async with running_server(config) as server:  # creates the schema, then the account
            await create_account(server.storage, USER, PASSWORD)
        begin = time.perf_counter()
        ids = await bulk_fill(config.storage.dsn, USER, messages, contacts)
        filled = time.perf_counter() - begin
        size = (directory / "bench.db").stat().st_size
        print(
            f"archive: {messages:,} messages, {contacts_count} contacts, one user; "
            f"SQLite file {size / 2**20:,.0f} MiB"
        )
        print(f"fill: {filled:.1f} s ({messages / filled:,.0f} rows/s in transactions of {BATCH:,})")
        print(f"pages of {page}, {runs} runs each after 5 warm-up runs")

        async with running_server(config) as server:
            cases = storage_cases(server.storage.archive, ids, contacts, page)
            results = {name: await timed(case, runs) for name, case in cases.items()}
        print_table("storage API: ArchiveStore.query (page + count + index)", results)
        if not skip_e2e:
            await end_to_end(config, ids, contacts, page, runs)


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000, help="archive size (default 100,000)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per query (default 200)")
    parser.add_argument("--page", type=int, default=50, help="page size (default 50, the MAM default)")
    parser.add_argument("--contacts", type=int, default=50, help="contacts the messages are spread over")
    parser.add_argument("--no-e2e", action="store_true", help="time the storage API only")
    args = parser.parse_args()
    if args.messages < 100:
        parser.error("--messages must be at least 100")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args.messages, args.runs, args.page, args.contacts, args.no_e2e))


if __name__ == "__main__":
    cli()
