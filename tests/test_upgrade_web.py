"""Upgrades with web clients holding resumable sessions (XEP-0198): over WebSocket (RFC 7395) the socket
closes and the client resumes on a new one, which reaches the successor; over BOSH (XEP-0206) the BOSH
session ends with the old process and the client resumes on a new one (its sid does not move)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from conftest import PASSWORD
from lxml import etree
from upgrade_node import message, node, upgrade_section
from wsclient import WsClient, q

from integration.boshclient import CLIENT, SM, BoshClient, Terminated, local


def bodies(elements: list[etree._Element]) -> list[str | None]:
    return [element.findtext(f"{{{CLIENT}}}body") for element in elements if local(element) == "message"]


async def test_a_bosh_client_resumes_on_the_successor(tmp_path: Path) -> None:
    running = node(tmp_path, upgrade_section(ready_timeout=20.0), http=True)
    await running.add_users("alice", "bob")
    await running.start()
    url = f"http://127.0.0.1:{running.config.http.port}/http-bind"
    try:
        async with aiohttp.ClientSession() as http:
            first = BoshClient(http, url)
            await first.login("alice", PASSWORD)
            await first.send(f"<enable xmlns='{SM}' resume='true'/>")
            enabled = await first.recv(lambda e: local(e) == "enabled")
            previd = enabled.get("id") or ""
            bob = await running.bound("bob", "desk")
            bob.send(message("alice@localhost/" + first.jid.split("/")[-1], "over-bosh"))
            await first.recv(lambda e: local(e) == "message")  # received, never acknowledged

            code, _out, err = await running.nitro("upgrade")

            assert code == 0, err
            with pytest.raises(Terminated):  # the old process ended the BOSH session it carried
                await first.recv(lambda _e: False, timeout=10)
            # A new connection, as a browser opens once the old one is closed. (One reused from a pool at the
            # moment the old process closes it fails like any keep-alive race: BOSH clients send it again,
            # XEP-0124 §14.3; aiohttp's client does not, so the test does not reuse the pool.)
            async with aiohttp.ClientSession() as fresh:
                second = BoshClient(fresh, url)
                await second.login("alice", PASSWORD, bind=False, poll=False)
                (resumed, *resent) = await second.step([f"<resume xmlns='{SM}' previd='{previd}' h='0'/>"])
                assert local(resumed) == "resumed", etree.tostring(resumed)
                assert bodies(resent) == ["over-bosh"]
                await second.stop()
            bob.close()
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
