"""Upgrades with web clients: over WebSocket (RFC 7395) the socket closes and a client with stream management
(XEP-0198) resumes on a new one, which reaches the successor; a BOSH session (XEP-0206) moves to the successor
under the same sid, with or without stream management, and its client goes on without logging in again."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest
from conftest import PASSWORD
from lxml import etree
from upgrade_node import Node, message, node, upgrade_section
from wsclient import WsClient, q

from integration.boshclient import CLIENT, SM, BoshClient, local


def bodies(elements: list[etree._Element]) -> list[str | None]:
    return [element.findtext(f"{{{CLIENT}}}body") for element in elements if local(element) == "message"]


def chat(to: str, text: str) -> str:
    return f"<message xmlns='{CLIENT}' to='{to}' type='chat' id='m-{text}'><body>{text}</body></message>"


async def exchange_through_upgrade(running: Node, alice: BoshClient, bob: BoshClient) -> list[str | None]:
    """bob sends alice messages before, during and after `nitro upgrade` (both over BOSH); alice sends
    bob one after it. Returns what alice received, in order."""
    upgrade = asyncio.get_running_loop().create_task(running.nitro("upgrade"))
    sent = 0
    while not upgrade.done() and sent < 40:  # bounded: the upgrade takes a few seconds
        await bob.send(chat(alice.jid, f"during-{sent}"))
        sent += 1
        await asyncio.sleep(0.1)
    code, _out, err = await upgrade
    assert code == 0, err
    await bob.send(chat(alice.jid, "after"))
    await alice.send(chat(bob.jid, "from-alice"))
    reply = await bob.recv(lambda e: local(e) == "message", timeout=15)
    assert reply.findtext(f"{{{CLIENT}}}body") == "from-alice"
    received: list[str | None] = []
    while len(received) < sent + 1:
        element = await alice.recv(lambda e: local(e) == "message", timeout=15)
        received.append(element.findtext(f"{{{CLIENT}}}body"))
    assert received == [*(f"during-{i}" for i in range(sent)), "after"]
    return received


async def moved_bosh(running: Node, alice: BoshClient, bob: BoshClient) -> None:
    sid = alice.sid
    first = running.first_pid
    await exchange_through_upgrade(running, alice, bob)
    assert running.pid != first  # the successor serves now
    assert alice.sid == sid  # no new login
    assert alice.terminal is None
    assert bob.terminal is None
    await running.wait_log("over BOSH, same sid", count=2)
    # an iq round trip on the same session still works and the session is alice's
    answer = await alice.iq(
        f"<iq xmlns='{CLIENT}' type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    )
    assert answer.get("type") == "result"


async def test_a_bosh_session_without_stream_management_keeps_its_sid(tmp_path: Path) -> None:
    # a slow drain: bob (logged in second) would move 2 s after alice, but his requests reach the successor
    # first, which asks the old process for his sid at once; what reaches the old process for alice meanwhile
    # is forwarded after her
    running = node(tmp_path, upgrade_section(ready_timeout=20.0, drain_rate=0.5), http=True)
    await running.add_users("alice", "bob")
    await running.start()
    url = f"http://127.0.0.1:{running.config.http.port}/http-bind"
    try:
        async with aiohttp.ClientSession() as http:
            alice = BoshClient(http, url, resend=True)
            bob = BoshClient(http, url, resend=True)
            await alice.login("alice", PASSWORD, "web")
            await bob.login("bob", PASSWORD, "web")
            await bob.send(chat(alice.jid, "before"))
            first = await alice.recv(lambda e: local(e) == "message")
            assert first.findtext(f"{{{CLIENT}}}body") == "before"

            await moved_bosh(running, alice, bob)

            await alice.terminate()
            await bob.terminate()
    finally:
        await running.stop()


async def test_a_bosh_session_with_stream_management_keeps_its_sid(tmp_path: Path) -> None:
    running = node(tmp_path, upgrade_section(ready_timeout=20.0), http=True)
    await running.add_users("alice", "bob")
    await running.start()
    url = f"http://127.0.0.1:{running.config.http.port}/http-bind"
    try:
        async with aiohttp.ClientSession() as http:
            alice = BoshClient(http, url, resend=True)
            bob = BoshClient(http, url, resend=True)
            await alice.login("alice", PASSWORD, "web")
            await bob.login("bob", PASSWORD, "web")
            await alice.send(f"<enable xmlns='{SM}' resume='true'/>")
            await alice.recv(lambda e: local(e) == "enabled")
            await bob.send(chat(alice.jid, "before"))
            await alice.recv(lambda e: local(e) == "message")  # received, not acknowledged yet

            await moved_bosh(running, alice, bob)

            # the counters moved with the session: 'before', every 'during-…', 'after' and the ping result
            await alice.send(f"<r xmlns='{SM}'/>")
            answer = await alice.recv(lambda e: local(e) == "a")
            assert answer.get("h") is not None
            await alice.send(f"<a xmlns='{SM}' h='{answer.get('h')}'/>")
            await alice.terminate()
            await bob.terminate()
    finally:
        await running.stop()


async def test_an_unknown_sid_after_an_upgrade_is_item_not_found(tmp_path: Path) -> None:
    running = node(tmp_path, upgrade_section(ready_timeout=20.0), http=True)
    await running.add_users("alice")
    await running.start()
    url = f"http://127.0.0.1:{running.config.http.port}/http-bind"
    try:
        async with aiohttp.ClientSession() as http:
            alice = BoshClient(http, url, resend=True)
            await alice.login("alice", PASSWORD, "web")
            upgrade = asyncio.get_running_loop().create_task(running.nitro("upgrade"))
            garbage = BoshClient(http, url)
            garbage.sid = "no-such-sid"
            during = await garbage.post(1)  # during the drain it waits a moment for the sid, then refuses
            assert (during.get("type"), during.get("condition")) == ("terminate", "item-not-found")
            code, _out, err = await upgrade
            assert code == 0, err
            for sid in ("no-such-sid", f"{alice.sid}x"):  # unknown to the successor, which is done adopting
                garbage.sid = sid
                after = await garbage.post(1)
                assert (after.get("type"), after.get("condition")) == ("terminate", "item-not-found")
            assert alice.terminal is None  # a request naming a wrong sid does not end a real session
            ping = f"<iq xmlns='{CLIENT}' type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
            assert (await alice.iq(ping)).get("type") == "result"  # and it goes on at the successor
            await alice.terminate()
    finally:
        await running.stop()


@pytest.mark.fault
async def test_the_successor_dies_after_a_bosh_session_moved_and_the_old_takes_it_back(
    tmp_path: Path,
) -> None:
    running = node(
        tmp_path, upgrade_section(ready_timeout=20.0, drain_rate=0.5, drain_deadline=30.0), http=True
    )
    await running.add_users("alice", "bob", "carol")
    await running.start()
    url = f"http://127.0.0.1:{running.config.http.port}/http-bind"
    try:
        async with aiohttp.ClientSession() as http:
            alice = BoshClient(http, url, resend=True)
            await alice.login("alice", PASSWORD, "web")  # first: moved before the successor dies
            sid = alice.sid
            rest = [await running.managed(name, "x") for name in ("bob", "carol")]
            upgrade = asyncio.get_running_loop().create_task(running.nitro("upgrade"))
            await running.wait_log("adopted from another process (over BOSH, same sid")
            successor = await running.wait_for_pid(lambda pid: pid != running.first_pid)
            os.kill(successor, signal.SIGKILL)
            code, _out, err = await upgrade
            assert code == 4, err
            await running.wait_for_pid(lambda pid: pid == running.first_pid)
            carol = rest[1][0]  # never moved (the drain was slow)
            carol.send(message(alice.jid, "after"))
            received = await alice.recv(lambda e: local(e) == "message", timeout=15)
            assert received.findtext(f"{{{CLIENT}}}body") == "after"
            assert alice.sid == sid  # the old process serves the same BOSH session again
            assert alice.terminal is None
            await alice.send(chat("carol@localhost/x", "back"))
            await carol.expect(b"<body>back</body>")
            await alice.terminate()
            for peer, _previd in rest:
                peer.close()
    finally:
        await running.stop()


@pytest.mark.fault
async def test_a_bosh_session_taken_back_goes_on_from_the_rids_the_successor_answered(tmp_path: Path) -> None:
    """The successor answers requests of the moved session (the client's rids move past the window the old
    process exported), then is SIGKILLed: the old process takes the session back and accepts the client's
    next rid at once, instead of waiting for rids it never saw until the inactivity timeout."""
    running = node(
        tmp_path, upgrade_section(ready_timeout=20.0, drain_rate=0.5, drain_deadline=30.0), http=True
    )
    await running.add_users("alice", "bob", "carol")
    await running.start()
    url = f"http://127.0.0.1:{running.config.http.port}/http-bind"
    try:
        async with aiohttp.ClientSession() as http:
            alice = BoshClient(http, url, resend=True)
            await alice.login("alice", PASSWORD, "web")  # first: moved before the successor dies
            sid = alice.sid
            rest = [await running.managed(name, "x") for name in ("bob", "carol")]
            upgrade = asyncio.get_running_loop().create_task(running.nitro("upgrade"))
            await running.wait_log("adopted from another process (over BOSH, same sid")
            successor = await running.wait_for_pid(lambda pid: pid != running.first_pid)
            carol = rest[1][0]  # never moved (the drain is slow)
            await alice.send(chat("carol@localhost/x", "via the successor"))
            await carol.expect(b"<body>via the successor</body>", timeout=15)  # handled there
            await asyncio.sleep(0.5)  # its answer and the next poll: the successor's rids only
            os.kill(successor, signal.SIGKILL)
            code, _out, err = await upgrade
            assert code == 4, err
            await running.wait_for_pid(lambda pid: pid == running.first_pid)
            carol.send(message(alice.jid, "after"))
            received = await alice.recv(lambda e: local(e) == "message", timeout=8)  # inactivity is 60 s
            assert received.findtext(f"{{{CLIENT}}}body") == "after"
            assert alice.sid == sid
            assert alice.terminal is None
            await alice.terminate()
            for peer, _previd in rest:
                peer.close()
    finally:
        await running.stop()


async def test_a_websocket_client_resumes_on_the_successor(tmp_path: Path) -> None:
    running = node(tmp_path, upgrade_section(ready_timeout=20.0), http=True)
    await running.add_users("alice", "bob")
    await running.start()
    url = f"ws://127.0.0.1:{running.config.http.port}/xmpp-websocket"
    alice = await WsClient.connect(url)
    again: WsClient | None = None
    try:
        full = await alice.login("alice", PASSWORD)
        await alice.send_raw(f"<enable xmlns='{SM}' resume='true'/>")
        previd = (await alice.until(lambda e: e.tag == q("enabled", SM))).get("id") or ""
        bob = await running.bound("bob", "desk")
        bob.send(message(full, "over-websocket"))
        await alice.until(lambda e: e.tag == q("message"))  # received, never acknowledged

        code, _out, err = await running.nitro("upgrade")

        assert code == 0, err
        await alice.closed(timeout=10)  # no <close/>: a lost connection, which XEP-0198 resumes
        again = await WsClient.connect(url)  # a new socket: the successor accepts it
        await again.open()
        await again.authenticate("alice", PASSWORD)
        await again.send_raw(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
        resumed = await again.until(lambda e: e.tag == q("resumed", SM))
        assert resumed.get("previd") == previd
        resent = await again.until(lambda e: e.tag == q("message"))
        assert resent.findtext(q("body")) == "over-websocket"
        bob.close()
    finally:
        await alice.close()
        if again is not None:
            await again.close()
        await running.stop()
