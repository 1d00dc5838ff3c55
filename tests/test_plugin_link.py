"""XEP-0114 component links: a slixmpp ComponentXMPP and slixmpp clients over real sockets, and raw
streams for the handshake's bad input (wrong or missing secret, unknown domain, conflict, forged from)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import slixmpp
from conftest import Clients, next_event, read_until, resolve, result_of, started_server, wait_for
from plugin_helpers import (
    ECHO,
    SECRET,
    connect_component,
    disconnect,
    plugins_config,
    raw_authenticated,
    raw_component,
)
from slixmpp import JID
from slixmpp.exceptions import IqError

from nitro.config import Config
from nitro.server import Server


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return plugins_config(tmp_path, queue_max=0)  # a plugin that is down: service-unavailable at once


async def test_message_to_and_from_a_component(server: Server, clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"))
    component = await connect_component(server)
    try:

        def echo(message: slixmpp.Message) -> None:
            component.send_message(mto=message["from"], mfrom=message["to"], mbody=f"echo: {message['body']}")

        component.add_event_handler("message", echo)
        alice.send_message(mto=JID(f"bot@{ECHO}"), mbody="hello")
        reply = await next_event(alice, "message")
        assert reply["body"] == "echo: hello"
        assert reply["from"].bare == f"bot@{ECHO}"
    finally:
        await disconnect(component)


async def test_iq_disco_and_presence(server: Server, clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"))
    component = await connect_component(server, plugins=("xep_0030", "xep_0199"))
    try:
        component.plugin["xep_0030"].add_feature("urn:example:echo")
        info = await result_of(alice.plugin["xep_0030"].get_info(jid=JID(ECHO), timeout=5))
        assert "urn:example:echo" in info["disco_info"]["features"]
        presence = asyncio.get_running_loop().create_future()
        component.add_event_handler("presence_available", lambda p: resolve(presence, p))
        alice.send_presence(pto=ECHO)
        got = await asyncio.wait_for(presence, 5)
        assert got["from"].bare == str(alice.boundjid.bare)
        # an IQ the component sends to the server's domain is answered by the server (XEP-0199 ping)
        rtt = await component.plugin["xep_0199"].ping(JID("localhost"), ifrom=JID(ECHO), timeout=5)
        assert rtt >= 0
    finally:
        await disconnect(component)


async def test_component_down_is_service_unavailable(server: Server, clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"), plugins=("xep_0199",))
    with pytest.raises(IqError) as raised:
        await alice.plugin["xep_0199"].send_ping(JID(ECHO), timeout=5)
    assert raised.value.iq["error"]["condition"] == "service-unavailable"
    assert raised.value.iq["error"]["type"] == "wait"


@pytest.mark.parametrize("secret", ["wrong", ""])
async def test_wrong_or_missing_secret_is_not_authorized(server: Server, secret: str) -> None:
    assert server.bridge is not None
    reader, writer, _head = await raw_component(server.bridge.port, ECHO)
    writer.write(b"<handshake/>" if not secret else f"<handshake>{secret}</handshake>".encode())
    data = await read_until(reader, b"</stream:stream>")
    assert b"not-authorized" in data
    assert await reader.read() == b""  # closed
    writer.close()
    assert not server.bridge.plugins["echo"].connected


@pytest.mark.parametrize("domain", ["localhost", "other.localhost"])
async def test_main_domain_or_unconfigured_subdomain_is_refused(server: Server, domain: str) -> None:
    assert server.bridge is not None
    reader, writer, head = await raw_component(server.bridge.port, domain)
    data = head + await read_until(reader, b"</stream:stream>")
    assert b"host-unknown" in data
    writer.close()


async def test_second_link_for_a_subdomain_is_a_conflict(server: Server) -> None:
    assert server.bridge is not None
    component = await connect_component(server)
    try:
        reader, writer, answer = await raw_authenticated(server.bridge.port)
        answer += await read_until(reader, b"</stream:stream>")
        assert b"conflict" in answer
        writer.close()
        assert server.bridge.plugins["echo"].link is not None  # the first link stays
    finally:
        await disconnect(component)


async def test_forged_from_is_invalid_from(server: Server, clients: Clients) -> None:
    assert server.bridge is not None
    bob = await clients.login(await clients.user("bob"))
    reader, writer, answer = await raw_authenticated(server.bridge.port)
    assert b"<handshake" in answer
    assert b"error" not in answer
    writer.write(b"<message from='alice@localhost' to='bob@localhost'><body>forged</body></message>")
    data = await read_until(reader, b"</stream:stream>")
    assert b"invalid-from" in data
    writer.close()
    received: list[slixmpp.Message] = []
    bob.add_event_handler("message", received.append)
    await asyncio.sleep(0.3)
    assert received == []
    await wait_for(lambda: not server.bridge.plugins["echo"].connected if server.bridge else False)


async def test_secret_and_subdomain_come_from_config(tmp_path: Path) -> None:
    config = plugins_config(tmp_path, {"a": {"mode": "external", "subdomain": "a.localhost", "secret": "x"}})
    async with started_server(config) as server:
        assert server.bridge is not None
        with pytest.raises(asyncio.TimeoutError):
            await connect_component(server, "a.localhost", SECRET)  # the wrong secret never starts
        component = await connect_component(server, "a.localhost", "x")
        await disconnect(component)


@pytest.fixture
async def public_server(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    config = plugins_config(tmp_path, host="0.0.0.0", allowed_peers=list(request.param))  # noqa: S104 (the test)
    async with started_server(config) as running:
        yield running


def _public_address() -> str | None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.parametrize("public_server", [()], indirect=True)
async def test_non_loopback_peer_refused_when_not_allowed(public_server: Server) -> None:
    address = _public_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    assert public_server.bridge is not None
    reader, writer = await asyncio.open_connection(
        address, public_server.bridge.port, local_addr=(address, 0)
    )
    data = await read_until(reader, b"</stream:stream>")
    assert b"policy-violation" in data
    writer.close()


@pytest.mark.parametrize("public_server", [("192.0.2.0/24", "10.0.0.0/8")], indirect=True)
async def test_non_loopback_peer_allowed_by_config(public_server: Server) -> None:
    address = _public_address()
    if address is None or not address.startswith(("192.0.2.", "10.")):
        pytest.skip("this machine's address is not in the allowed networks of this test")
    assert public_server.bridge is not None
    _reader, writer, head = await raw_component(public_server.bridge.port, ECHO, host=address)
    assert b"jabber:component:accept" in head
    assert b"error" not in head
    writer.close()
