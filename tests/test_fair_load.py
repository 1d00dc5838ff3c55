"""Fair service while one account storms (issue 11 item 2): an account with a 4,000-item roster logs in
1,000 times at once (tests/fair_load.py, a process of its own) while alice and bob chat through the same
`nitro serve`; their messages all arrive, with p99 latency under one second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import slixmpp
from conftest import DOMAIN, PASSWORD, free_port, resolve
from sqlalchemy import insert, select, update
from test_cli import serve

from nitro.accounts import create_account
from nitro.storage.models import RosterItem
from nitro.storage.schema import accounts, roster_items, roster_versions
from nitro.storage.sql import create_engine, open_sql_storage
from nitro.storage.sql_base import WRITE
from nitro.storage.sql_roster import item_row

ROOT = Path(__file__).resolve().parents[1]
ROSTER = 4000
LOGINS = 1000
INTERVAL = 0.02  # seconds between two of alice's messages
P99_LIMIT = 1.0


async def provision(tmp_path: Path) -> str:
    """heavy (4,000 contacts, subscription both), alice and bob."""
    dsn = f"sqlite+aiosqlite:///{tmp_path}/nitro.db"
    async with open_sql_storage(dsn) as storage:
        for name in ("heavy", "alice", "bob"):
            await create_account(storage, name, PASSWORD)
    engine = create_engine(dsn)
    try:
        async with engine.execution_options(**{WRITE: True}).begin() as conn:
            heavy = (
                await conn.execute(select(accounts.c.id).where(accounts.c.username == b"heavy"))
            ).scalar_one()
            items = [
                {"account_id": heavy, **item_row(RosterItem(jid=f"c{n}@{DOMAIN}", subscription="both"))}
                for n in range(ROSTER)
            ]
            await conn.execute(insert(roster_items), items)
            await conn.execute(
                update(roster_versions).where(roster_versions.c.account_id == heavy).values(version=ROSTER)
            )
    finally:
        await engine.dispose()
    return dsn


def write_config(tmp_path: Path, dsn: str, port: int) -> Path:
    config = tmp_path / "nitro.toml"
    config.write_text(
        f"""
[server]
domain = "{DOMAIN}"
[storage]
dsn = "{dsn}"
[c2s]
port = {port}
direct_tls_port = {free_port()}
# the load logs in over plain TCP (loopback, as the benchmark); the pair uses STARTTLS
require_encryption = false
allow_plain_without_tls = true
[tls]
cert = "{tmp_path}/cert.pem"
key = "{tmp_path}/key.pem"
[auth]
scram_iterations = 4096
[limits]
max_connections_per_address = {LOGINS + 100}
[metrics]
port = 0
[http]
enabled = false
"""
    )
    return config


async def chatter(jid: str, port: int, cert: Path, on_message: Any = None) -> slixmpp.ClientXMPP:
    client = slixmpp.ClientXMPP(jid, PASSWORD)
    client.ca_certs = cert
    client.enable_direct_tls = False
    started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def on_start(_event: Any) -> None:
        client.send_presence()
        resolve(started, True)

    client.add_event_handler("session_start", on_start)
    if on_message is not None:
        client.add_event_handler("message", on_message)
    client.connect("127.0.0.1", port)
    await asyncio.wait_for(started, 30)
    return client


@pytest.mark.slow
async def test_a_thousand_logins_of_one_account_leave_another_pair_chatting(tmp_path: Path) -> None:
    dsn = await provision(tmp_path)
    port = free_port()
    server = await serve(write_config(tmp_path, dsn, port))
    load: asyncio.subprocess.Process | None = None
    clients: list[slixmpp.ClientXMPP] = []
    draining: asyncio.Task[None] | None = None
    try:
        assert server.stdout is not None
        while b"serving" not in await asyncio.wait_for(server.stdout.readline(), 30):
            pass
        draining = asyncio.create_task(_drain(server.stdout, tmp_path / "nitro.log"))  # a full pipe blocks it
        sent: dict[int, float] = {}
        latency: dict[int, float] = {}

        def received(message: Any) -> None:
            if message["body"].isdigit() and int(message["body"]) in sent:
                latency[int(message["body"])] = time.monotonic() - sent[int(message["body"])]

        bob = await chatter(f"bob@{DOMAIN}", port, tmp_path / "cert.pem", received)
        alice = await chatter(f"alice@{DOMAIN}", port, tmp_path / "cert.pem")
        clients += [alice, bob]

        async def chat(until: asyncio.Event) -> None:
            seq = 0
            while not until.is_set():
                sent[seq] = time.monotonic()
                alice.send_message(mto=slixmpp.JID(f"bob@{DOMAIN}"), mbody=str(seq), mtype="chat")
                seq += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(until.wait(), INTERVAL)

        stop = asyncio.Event()
        chatting = asyncio.create_task(chat(stop))
        await asyncio.sleep(1.0)  # the pair alone
        storm_start = time.monotonic()
        first_of_storm = len(sent)
        load = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "tests" / "fair_load.py"),
            *("--port", str(port), "--domain", DOMAIN, "--user", "heavy", "--password", PASSWORD),
            *("--logins", str(LOGINS)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
        )
        assert load.stdout is not None
        report = json.loads(await asyncio.wait_for(load.stdout.readline(), 180))
        storm = time.monotonic() - storm_start
        await asyncio.sleep(1.0)  # and a little after
        stop.set()
        await chatting
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_all_in(latency, sent), 10)
        missed = sorted(set(sent) - set(latency))
        during = sorted(latency.get(seq, float("inf")) for seq in range(first_of_storm, len(sent)))
        p99 = during[int(len(during) * 0.99) - 1]
        print(
            f"\nstorm of {LOGINS} logins: {storm:.1f} s, {report}; pair during it: {len(during)} messages, "
            f"{len(missed)} missed, p50 {statistics.median(during) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
            f"max {during[-1] * 1000:.1f} ms"
        )
        worst = sorted(range(first_of_storm, len(sent)), key=lambda q: -latency.get(q, 99))[:10]
        print(
            "worst (sent at s into the storm, latency s):",
            sorted((round(sent[q] - storm_start, 2), round(latency.get(q, 99), 2)) for q in worst),
        )
        assert not missed
        assert report["bound"] == 10  # [c2s] max_resources_per_account; the rest were refused
        assert p99 < P99_LIMIT
    finally:
        for client in clients:
            client.abort()
        if load is not None and load.returncode is None:
            assert load.stdin is not None
            load.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(load.wait(), 30)
            if load.returncode is None:
                load.kill()
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), 60)
        if draining is not None:
            await draining


async def _drain(output: asyncio.StreamReader, log: Path) -> None:
    with log.open("wb") as file:
        while line := await output.readline():
            file.write(line)


async def _all_in(latency: dict[int, float], sent: dict[int, float]) -> None:
    """Every message sent arrived (bounded by the caller): none missed."""
    while len(latency) < len(sent):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
