"""plugins/compliance: every routed message recorded once (also across a SIGKILL of the plugin under
traffic, from the core's spool), the policy filter, the append-only table, and the search / export /
purge CLI over the same database."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slixmpp
import sqlalchemy as sa
from conftest import Clients, started_server, wait_for
from plugin_helpers import SECRET, config_file
from slixmpp import JID

from nitro.bridge.spool import Spool
from plugins.compliance.store import messages, open_store

ENTRY = {"subdomain": "compliance.localhost", "secret": SECRET, "block_patterns": ["(?i)insider tip"]}


async def count(dsn: str) -> list[tuple[int, str | None]]:
    engine = await open_store(dsn)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                sa.select(messages.c.seq, messages.c.body).order_by(messages.c.id)
            )
            return [(int(seq), body) for seq, body in rows]
    finally:
        await engine.dispose()


async def until_recorded(dsn: str, wanted: int, timeout: float = 10.0) -> None:
    """Poll the record (bounded) until it holds `wanted` rows."""
    for _ in range(int(timeout / 0.1)):
        if len(await count(dsn)) >= wanted:
            return
        await asyncio.sleep(0.1)


def cli(config: Path, *arguments: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "plugins.compliance", "--config", str(config), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        check=True,
    )
    return result.stdout


async def test_records_blocks_searches_exports_and_purges(tmp_path: Path) -> None:
    config = config_file(tmp_path, {"compliance": {"mode": "inprocess", **ENTRY}})
    assert config.file is not None
    async with started_server(config) as server:
        assert server.bridge is not None
        await wait_for(
            lambda: server.bridge is not None and server.bridge.plugins["compliance"].connected, 10
        )
        await wait_for(
            lambda: bool(server.bridge and server.bridge.hooks.plugins["compliance.localhost"].observes)
        )
        clients = Clients(server)
        try:
            alice = await clients.login(await clients.user("alice"))
            await clients.user("bob")
            await clients.user("carol")
            errors: list[slixmpp.Message] = []
            alice.add_event_handler("message_error", errors.append)
            alice.send_message(mto=JID("bob@localhost"), mbody="quarterly numbers", mtype="chat")
            alice.send_message(mto=JID("carol@localhost"), mbody="lunch?", mtype="chat")
            alice.send_message(mto=JID("bob@localhost"), mbody="an Insider Tip for you", mtype="chat")
            await wait_for(lambda: len(errors) == 1)
            assert errors[0].xml.find(".//{urn:ietf:params:xml:ns:xmpp-stanzas}policy-violation") is not None
            dsn = config.storage.dsn
            await until_recorded(dsn, 2)
            assert [body for _seq, body in await count(dsn)] == ["quarterly numbers", "lunch?"]
        finally:
            await clients.close_all()
    # the CLI, on the same database (the server is stopped: nothing else writes)
    found = [json.loads(line) for line in cli(config.file, "search", "--user", "bob@localhost").splitlines()]
    assert [(r["from"], r["to"], r["body"]) for r in found] == [
        ("alice@localhost", ["bob@localhost"], "quarterly numbers")
    ]
    assert found[0]["type"] == "chat"
    assert found[0]["stanza_id"]
    texts = cli(config.file, "search", "--text", "lunch", "--since", "2000-01-01T00:00:00Z")
    assert [json.loads(line)["body"] for line in texts.splitlines()] == ["lunch?"]
    assert cli(config.file, "search", "--until", "2000-01-01") == ""
    today = time.strftime("%Y-%m-%d", time.gmtime())
    feed = tmp_path / "feed.jsonl"
    cli(config.file, "export", "--day", today, "--out", str(feed))
    exported = [json.loads(line) for line in feed.read_text().splitlines()]
    assert [r["body"] for r in exported] == ["quarterly numbers", "lunch?"]
    assert set(exported[0]) == {"id", "sent_at", "recorded_at", "from", "to", "type", "stanza_id", "body"}
    # append-only: an UPDATE is refused by the database itself
    engine = await open_store(config.storage.dsn)
    try:
        async with engine.begin() as connection:
            with pytest.raises(sa.exc.DBAPIError, match="append-only"):
                await connection.execute(sa.update(messages).values(body="rewritten"))
    finally:
        await engine.dispose()
    cli(config.file, "purge", "--older-than-days", "0.0000001")
    assert await count(config.storage.dsn) == []


async def test_sigkill_under_traffic_loses_and_doubles_nothing(tmp_path: Path) -> None:
    entry = {"mode": "process", **ENTRY, "spool": str(tmp_path / "spool")}
    config = config_file(tmp_path, {"compliance": entry}, stop_timeout=2.0)
    async with started_server(config) as server:
        assert server.bridge is not None
        supervisor = server.bridge.supervisor
        assert supervisor is not None
        hooks = server.bridge.hooks.plugins["compliance.localhost"]
        await wait_for(lambda: bool(hooks.observes) and server.bridge is not None, 30)
        clients = Clients(server)
        try:
            alice = await clients.login(await clients.user("alice"))
            await clients.user("bob")
            first = supervisor.processes["compliance"].pid
            total = 60
            for n in range(total):
                alice.send_message(mto=JID("bob@localhost"), mbody=f"m{n}", mtype="chat")
                if n == total // 3:
                    os.kill(first, signal.SIGKILL)  # the child the supervisor started, by its pid
                await asyncio.sleep(0.01)
            await until_recorded(config.storage.dsn, total, timeout=30)
            rows = await count(config.storage.dsn)
            assert sorted(body or "" for _seq, body in rows) == sorted(f"m{n}" for n in range(total))
            assert len({seq for seq, _body in rows}) == total  # each once
            assert supervisor.processes["compliance"].pid != first
            await wait_for(lambda: len(hooks.queue) == 0, 10)  # all acknowledged
        finally:
            await clients.close_all()


def test_spool_keeps_what_was_not_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for seq in (1, 2, 3):
        spool.append(seq, f"<message><event seq='{seq}'/></message>".encode())
    spool.ack(2)
    spool.close()
    again = Spool(tmp_path)
    assert (again.acked, again.last_seq, [seq for seq, _xml in again.entries]) == (2, 3, [3])
    assert again.epoch == spool.epoch
    again.close()
