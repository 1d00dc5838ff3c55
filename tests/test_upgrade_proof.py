"""Clients without stream management through an upgrade and a SIGTERM (issue 14), against real `nitro serve`
processes and slixmpp clients: what such a client did not prove it read (no answer to the closing ping,
nitro/c2s/read_proof.py) is stored offline and reaches it at its next login; what it proved is not stored
again (no duplicates)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from conftest import PASSWORD
from upgrade_node import Node, message, node, upgrade_section

from integration.bots import Bot, close, login
from nitro.c2s.read_proof import PROVE_AFTER

BOB = "bob@localhost"


async def until(predicate: object, timeout: float = 15.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not (callable(predicate) and predicate()):
        if asyncio.get_running_loop().time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def bob_logs_in(running: Node, plugins: tuple[str, ...] = ()) -> Bot:
    cert = running.config.path(running.config.tls.cert)
    return await login(BOB, PASSWORD, running.config.c2s.port, cert, plugins=plugins)


async def upgraded(running: Node) -> None:
    code, _out, err = await running.nitro("upgrade")
    assert code == 0, err
    assert running.first is not None
    await asyncio.wait_for(running.first.wait(), 20)  # the old process exits once drained


@pytest.mark.parametrize("plugins", [(), ("xep_0199",)], ids=["error-answer", "xep-0199-answer"])
async def test_a_client_that_reads_loses_nothing_and_gets_nothing_twice(
    tmp_path: Path, plugins: tuple[str, ...]
) -> None:
    """slixmpp answers the server's pings: with XEP-0199 a result, without the plugin an error
    (feature-not-implemented); both prove it read what came before."""
    running = node(tmp_path, upgrade_section(ready_timeout=20.0, drain_rate=50.0, drain_deadline=10.0))
    await running.add_users("alice", "bob")
    await running.start()
    try:
        bob = await bob_logs_in(running, plugins)
        alice = await running.bound("alice", "desk")
        sent = [f"n{n}" for n in range(PROVE_AFTER + 8)]  # one proof on the way, 8 left for the drain's
        alice.send(b"".join(message(BOB, text) for text in sent))
        await until(lambda: len(bob.messages) == len(sent))

        await upgraded(running)

        await until(lambda: not bob.authenticated or bob.transport is None)
        log = running.log.read_text()
        assert "never proven read" not in log
        await close(bob)
        again = await bob_logs_in(running, plugins)  # on the successor: nothing waits offline for bob
        await asyncio.sleep(1.5)
        assert again.messages == []
        assert bob.messages == sent
        await close(again)
        alice.close()
    finally:
        await running.stop()


async def test_a_client_that_stopped_reading_finds_its_messages_offline(tmp_path: Path) -> None:
    running = node(tmp_path, upgrade_section(ready_timeout=20.0, drain_rate=50.0, drain_deadline=10.0))
    await running.add_users("alice", "bob")
    await running.start()
    try:
        bob = await bob_logs_in(running, ("xep_0199",))
        alice = await running.bound("alice", "desk")
        alice.send(message(BOB, "early"))
        await until(lambda: bob.messages == ["early"])
        assert bob.transport is not None
        bob.transport.pause_reading()  # a hung client: what it is sent now stays unread
        late = [f"late{n}" for n in range(5)]
        alice.send(b"".join(message(BOB, text) for text in late))
        await asyncio.sleep(0.5)

        await upgraded(running)

        log = running.log.read_text()
        assert "messages were never proven read" in log
        bob.abort()
        again = await bob_logs_in(running)
        await until(lambda: set(late) <= set(again.messages))
        assert [text for text in again.messages if text != "early"] == late  # in order, each once
        await close(again)
        alice.close()
    finally:
        await running.stop()


async def test_sigterm_stores_what_a_client_without_stream_management_did_not_read(tmp_path: Path) -> None:
    """A raw client that never reads (nor answers): SIGTERM gives it `[upgrade] proof_timeout`, then what it
    was sent is stored offline; the next server delivers it."""
    running = node(tmp_path, upgrade_section(proof_timeout=1.0))
    await running.add_users("alice", "bob")
    await running.start()
    try:
        bob = await running.bound("bob", "raw")
        bob.send(b"<presence/>")
        alice = await running.bound("alice", "desk")
        alice.send(message(f"{BOB}/raw", "t1") + message(f"{BOB}/raw", "t2"))
        await asyncio.sleep(0.5)  # written to bob's socket, never read
        assert running.first is not None
        started = asyncio.get_running_loop().time()
        os.kill(running.first_pid, signal.SIGTERM)
        assert await asyncio.wait_for(running.first.wait(), 20) == 0
        assert asyncio.get_running_loop().time() - started < 10
        assert "2 messages were never proven read" in running.log.read_text()
        bob.close()
        alice.close()
        await running.start()
        again = await bob_logs_in(running)
        await until(lambda: again.messages == ["t1", "t2"])
        await close(again)
    finally:
        await running.stop()
