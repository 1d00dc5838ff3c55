"""The observe spool in NATS JetStream: a real nats-server (started here, stopped by its pid) keeps the
events a plugin has not acknowledged across a restart of the Nitro server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Clients, free_port, started_server, wait_for
from plugin_helpers import SECRET, plugins_config
from slixmpp import JID

from nitro.bridge.jetstream import JetStreamSpool
from nitro.sdk import Observed, Plugin, settings_from_config

pytestmark = pytest.mark.skipif(shutil.which("nats-server") is None, reason="nats-server is not installed")


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path / "js")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):  # bounded: up to 10 s for the port to open
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), 0.1),
            ):
                break
            time.sleep(0.1)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


async def test_unacknowledged_events_stay_in_the_stream(nats_url: str) -> None:
    spool = await JetStreamSpool.open(nats_url, "unit")
    for seq in (1, 2, 3):
        spool.append(seq, f"<message xmlns='jabber:component:accept'><e n='{seq}'/></message>".encode())
    await spool.flushed()
    spool.ack(2)
    await spool.aclose()
    again = await JetStreamSpool.open(nats_url, "unit")
    try:
        assert [seq for seq, _xml in again.entries] == [3]
        assert (again.last_seq, again.epoch) == (3, spool.epoch)
    finally:
        await again.aclose()


async def test_events_survive_a_restart_of_the_server(tmp_path: Path, nats_url: str) -> None:
    entry = {"mode": "external", "subdomain": "a.localhost", "secret": SECRET, "jetstream": nats_url}
    config = plugins_config(tmp_path, {"a": entry})
    seen: list[str] = []
    observer = Plugin("a")

    @observer.observe("message")
    async def record(event: Observed) -> None:
        assert event.stanza is not None
        seen.append(event.stanza.findtext("{jabber:client}body") or "")

    async with started_server(config) as server:
        assert server.bridge is not None
        settings = dataclasses.replace(settings_from_config(config, "a"), core_port=server.bridge.port)
        task = asyncio.create_task(observer.main(settings))
        hooks = server.bridge.hooks.plugins["a.localhost"]
        await wait_for(lambda: bool(hooks.observes), 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await wait_for(lambda: server.bridge is not None and not server.bridge.plugins["a"].connected)
        clients = Clients(server)
        try:
            alice = await clients.login(await clients.user("alice"))
            await clients.user("bob")
            for n in range(3):
                alice.send_message(mto=JID("bob@localhost"), mbody=f"m{n}", mtype="chat")
            await wait_for(lambda: len(hooks.queue) == 3)
            assert hooks.jetstream is not None
            await hooks.jetstream.flushed()
        finally:
            await clients.close_all()
    # a new server: the three events come from the stream
    async with started_server(config) as server:
        assert server.bridge is not None
        assert len(server.bridge.hooks.plugins["a.localhost"].queue) == 3
        settings = dataclasses.replace(settings_from_config(config, "a"), core_port=server.bridge.port)
        task = asyncio.create_task(observer.main(settings))
        try:
            await wait_for(lambda: seen == ["m0", "m1", "m2"], 10)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
