"""XMPP over WebSocket (RFC 7395) as transcripts: alice in a browser-like WebSocket client, bob on TCP with
slixmpp. Login, roster, presence, chat, carbons, MAM and stream-management resume cross the transports."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import slixmpp
from conftest import DOMAIN, PASSWORD, Clients, make_config, started_server, wait_for
from lxml import etree
from wsclient import FRAMING, WsClient, iq, message, q, stanza

from nitro.c2s.session import ClientSession
from nitro.server import Server
from nitro.xmpp import ns

CARBONS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"
MAM = "urn:xmpp:mam:2"
SM = "urn:xmpp:sm:3"


def ws_url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.config.http.port}/xmpp-websocket"


class WebSockets:
    """Opens WsClients to the test server and closes them at the end of the test."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.opened: list[WsClient] = []

    async def connect(self, **options: Any) -> WsClient:
        client = await WsClient.connect(ws_url(self.server), DOMAIN, **options)
        self.opened.append(client)
        return client

    async def login(self, user: str, resource: str = "web", *, presence: bool = True) -> WsClient:
        client = await self.connect()
        await client.login(user, PASSWORD, resource=resource)
        if presence:
            await client.send(stanza("presence"))
        return client

    async def close_all(self) -> None:
        for client in self.opened:
            await client.close()


@pytest.fixture
async def sockets(server: Server) -> AsyncIterator[WebSockets]:
    pool = WebSockets(server)
    yield pool
    await pool.close_all()


def body(element: etree._Element) -> str | None:
    return element.findtext(q("body"))


def is_message(text: str) -> Any:
    return lambda element: element.tag == q("message") and body(element) == text


async def inbox(client: slixmpp.ClientXMPP) -> list[str]:
    bodies: list[str] = []
    client.add_event_handler("message", lambda msg: bodies.append(str(msg["body"])))
    return bodies


# -- login ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"])
async def test_alice_logs_in_over_websocket(
    server: Server, clients: Clients, sockets: WebSockets, mechanism: Any
) -> None:
    await clients.user("alice")
    alice = await sockets.connect()
    features = await alice.open()
    # Loopback counts as encrypted: PLAIN is offered, STARTTLS never is over WebSocket (RFC 7395 §3.9).
    assert features.find(q("starttls", ns.TLS)) is None
    assert alice.mechanisms() == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
    await alice.authenticate("alice", PASSWORD, mechanism)
    assert await alice.bind("browser") == f"alice@{DOMAIN}/browser"
    (session,) = server.sessions
    assert isinstance(session, ClientSession)  # the registry is typed by the protocol modules see
    assert (session.transport.kind, session.transport.peer_host, session.mechanism) == (
        "websocket",
        "127.0.0.1",
        mechanism,
    )


async def test_our_open_names_the_domain_stream_id_version_and_language(
    clients: Clients, sockets: WebSockets
) -> None:
    alice = await sockets.connect()
    await alice.send_raw(f"<open xmlns='{FRAMING}' to='{DOMAIN}' version='1.0' xml:lang='de'/>")
    opened = await alice.receive()
    assert opened.tag == q("open", FRAMING)
    assert opened.get("from") == DOMAIN
    assert opened.get("version") == "1.0"
    assert opened.get(f"{{{ns.XML}}}lang") == "de"
    assert opened.get("id")
    features = await alice.receive()
    assert features.tag == q("features", ns.STREAM)


async def test_a_wrong_password_fails_and_the_client_may_try_again(
    clients: Clients, sockets: WebSockets
) -> None:
    await clients.user("alice")
    alice = await sockets.connect()
    await alice.open()
    await alice.send_raw(alice._auth("PLAIN", b"\0alice\0wrong"))
    failure = await alice.receive()
    assert failure.tag == q("failure", ns.SASL)
    assert failure.find(q("not-authorized", ns.SASL)) is not None
    await alice.authenticate("alice", PASSWORD, "PLAIN")
    assert await alice.bind("ws") == f"alice@{DOMAIN}/ws"


# -- roster, presence and chat with a TCP client ----------------------------------------------------


async def test_alice_on_websocket_and_bob_on_tcp_subscribe_and_chat(
    clients: Clients, sockets: WebSockets
) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    bob = await clients.login(bob_jid)  # slixmpp accepts and returns subscriptions by default
    bob_inbox = await inbox(bob)
    alice = await sockets.login("alice")

    await alice.send(stanza("presence", to=bob_jid, type="subscribe"))
    await alice.until(lambda e: e.tag == q("presence") and e.get("type") == "subscribed")
    await alice.until(lambda e: e.tag == q("presence") and e.get("type") == "subscribe")
    await alice.send(stanza("presence", to=bob_jid, type="subscribed"))
    available = await alice.saw(
        lambda e: e.tag == q("presence") and e.get("type") is None and e.get("from", "").startswith(bob_jid)
    )
    assert available.get("from") == str(bob.boundjid)

    roster = await alice.iq(iq("get", "<query xmlns='jabber:iq:roster'/>"))
    (item,) = roster.iter(q("item", ns.ROSTER))
    assert (item.get("jid"), item.get("subscription")) == (bob_jid, "both")

    await alice.send(message(bob_jid, "Wherefore art thou?"))
    await wait_for(lambda: bob_inbox == ["Wherefore art thou?"])
    bob.send_message(mto=slixmpp.JID(alice.jid), mbody="Here, on the balcony.", mtype="chat")
    received = await alice.until(is_message("Here, on the balcony."))
    assert received.get("from") == str(bob.boundjid)
    assert received.get("to") == alice.jid
    assert alice_jid in alice.jid


async def test_two_websocket_users_chat(clients: Clients, sockets: WebSockets) -> None:
    await clients.user("alice")
    await clients.user("bob")
    alice, bob = await sockets.login("alice"), await sockets.login("bob")
    await alice.send(message(bob.jid, "ping over two sockets"))
    assert (await bob.until(is_message("ping over two sockets"))).get("from") == alice.jid


# -- carbons (XEP-0280) and the archive (XEP-0313) -------------------------------------------------------


async def test_carbons_reach_alices_other_websocket(clients: Clients, sockets: WebSockets) -> None:
    await clients.user("alice")
    bob_jid = await clients.user("bob")
    bob = await clients.login(bob_jid)
    bob_inbox = await inbox(bob)
    desktop = await sockets.login("alice", "desktop")
    phone = await sockets.login("alice", "phone")
    await desktop.iq(iq("set", f"<enable xmlns='{CARBONS}'/>"))

    bob.send_message(mto=slixmpp.JID(phone.jid), mbody="to the phone", mtype="chat")
    await phone.until(is_message("to the phone"))
    copy = await desktop.until(lambda e: e.find(q("received", CARBONS)) is not None)
    forwarded = copy.find(f"{q('received', CARBONS)}/{q('forwarded', FORWARD)}/{q('message')}")
    assert forwarded is not None
    assert body(forwarded) == "to the phone"

    await phone.send(message(bob_jid, "from the phone"))
    await wait_for(lambda: bob_inbox == ["from the phone"])
    sent = await desktop.until(lambda e: e.find(q("sent", CARBONS)) is not None)
    forwarded = sent.find(f"{q('sent', CARBONS)}/{q('forwarded', FORWARD)}/{q('message')}")
    assert forwarded is not None
    assert body(forwarded) == "from the phone"


async def test_alice_reads_her_archive_over_websocket(clients: Clients, sockets: WebSockets) -> None:
    await clients.user("alice")
    bob_jid = await clients.user("bob")
    bob = await clients.login(bob_jid)
    bob_inbox = await inbox(bob)
    alice = await sockets.login("alice")
    await alice.send(message(bob_jid, "one"))
    await wait_for(lambda: bob_inbox == ["one"])
    bob.send_message(mto=slixmpp.JID(alice.jid), mbody="two", mtype="chat")
    await alice.until(is_message("two"))

    query = iq("set", f"<query xmlns='{MAM}' queryid='q1'/>")
    query.set("id", "mam1")
    await alice.send(query)
    bodies = []
    while True:
        element = await alice.receive()
        if element.tag == q("iq"):
            break
        result = element.find(q("result", MAM))
        assert result is not None
        assert result.get("queryid") == "q1"
        forwarded = result.find(f"{q('forwarded', FORWARD)}/{q('message')}")
        assert forwarded is not None
        bodies.append(body(forwarded))
    assert (element.get("id"), element.get("type")) == ("mam1", "result")
    assert element.find(q("fin", MAM)) is not None
    assert bodies == ["one", "two"]


# -- stream management (XEP-0198) ------------------------------------------------------------------


async def test_a_lost_websocket_resumes_on_a_new_one_and_nothing_is_lost(
    server: Server, clients: Clients, sockets: WebSockets
) -> None:
    await clients.user("alice")
    bob_jid = await clients.user("bob")
    bob = await clients.login(bob_jid)
    alice = await sockets.login("alice", presence=False)
    await alice.send_raw(f"<enable xmlns='{SM}' resume='true'/>")
    enabled = await alice.until(lambda e: e.tag == q("enabled", SM))
    previd = enabled.get("id")
    assert previd
    assert enabled.get("resume") == "true"
    await alice.send(stanza("presence"))
    handled = 0  # stanzas alice received since <enabled/> (XEP-0198 §4 counts them)
    for text in ("first", "second"):
        bob.send_message(mto=slixmpp.JID(alice.jid), mbody=text, mtype="chat")
        while body(element := await alice.receive()) != text:
            handled += element.tag in (q("message"), q("presence"), q("iq"))
        handled += 1

    await alice.ws.close()  # the WebSocket goes without <close/>: a lost connection (RFC 7395 §3.6)
    await wait_for(lambda: any(session.detached for session in server.sessions))
    bob.send_message(mto=slixmpp.JID(alice.jid), mbody="while away", mtype="chat")

    again = await sockets.connect()
    await again.open()
    await again.authenticate("alice", PASSWORD)
    await again.send_raw(f"<resume xmlns='{SM}' previd='{previd}' h='{handled - 1}'/>")  # not the last one
    resumed = await again.until(lambda e: e.tag == q("resumed", SM))
    assert resumed.get("previd") == previd
    replayed = [body(await again.until(lambda e: e.tag == q("message"))) for _ in range(2)]
    assert replayed == ["second", "while away"]
    bob.send_message(mto=slixmpp.JID(alice.jid), mbody="after resume", mtype="chat")
    await again.until(is_message("after resume"))
    (session,) = [session for session in server.sessions if session.username == "alice"]
    assert session.transport.kind == "websocket"


# -- keepalive: WebSocket pings (RFC 7395 §3.8) ---------------------------------------------------


async def test_a_client_that_never_answers_pings_is_closed_after_the_timeout(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, c2s={"idle_ping_after": 0.4, "ping_timeout": 0.4, "keepalive_interval": 0.15}
    )
    async with started_server(config) as server:
        await Clients(server).user("alice")
        alice = await WsClient.connect(ws_url(server), autoping=False)
        try:
            await alice.login("alice", PASSWORD)
            condition, seen = await alice.stream_error()
            assert condition == "connection-timeout"
            assert alice.pings, "the server pinged on the WebSocket before giving up"
            assert any(f'xmlns="{ns.PING}"' in element for element in seen), "and with an XMPP ping"
        finally:
            await alice.close()


async def test_a_client_that_answers_pings_stays_past_the_idle_timeout(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, c2s={"idle_ping_after": 0.4, "ping_timeout": 0.4, "keepalive_interval": 0.15}
    )
    async with started_server(config) as server:
        await Clients(server).user("alice")
        alice = await WsClient.connect(ws_url(server), autoping=False)
        try:
            await alice.login("alice", PASSWORD)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 1.5
            while loop.time() < deadline:  # answer the WebSocket pings, nothing else
                pings = len(alice.pings)
                with pytest.raises(TimeoutError):
                    await alice.receive(timeout=0.05)
                for payload in alice.pings[pings:]:
                    await alice.ws.pong(payload)
            assert len(alice.pings) >= 3
            await alice.iq(iq("get", f"<ping xmlns='{ns.PING}'/>", to=DOMAIN))  # still served
        finally:
            await alice.close()


# -- closing (RFC 7395 §3.6) ------------------------------------------------------------------------


async def test_close_is_answered_with_close_and_the_websocket_ends(
    server: Server, clients: Clients, sockets: WebSockets
) -> None:
    await clients.user("alice")
    alice = await sockets.login("alice")
    await alice.send_raw(f"<close xmlns='{FRAMING}'/>")
    answer = await alice.until(lambda e: e.tag == q("close", FRAMING))
    assert not answer.attrib  # no see-other-uri
    closing = await alice.closed()
    assert closing.data == 1000
    await wait_for(lambda: not server.sessions)


async def test_shutdown_tells_websocket_clients_system_shutdown(tmp_path: Path) -> None:
    async with started_server(make_config(tmp_path)) as server:
        await Clients(server).user("alice")
        alice = await WsClient.connect(ws_url(server))
        await alice.login("alice", PASSWORD)
        closing = asyncio.create_task(alice.stream_error())
        await asyncio.sleep(0.05)
    try:
        condition, _ = await closing
        assert condition == "system-shutdown"
    finally:
        await alice.close()


async def test_wss_on_the_tls_port_with_the_servers_certificate(tmp_path: Path) -> None:
    async with started_server(make_config(tmp_path)) as server:
        await Clients(server).user("alice")
        context = ssl.create_default_context(cafile=str(server.config.path(server.config.tls.cert)))
        url = f"wss://127.0.0.1:{server.config.http.tls_port}/xmpp-websocket"
        alice = await WsClient.connect(url, ssl=context, server_hostname=DOMAIN)
        try:
            assert await alice.login("alice", PASSWORD, "PLAIN") == f"alice@{DOMAIN}/ws"
            (session,) = server.sessions
            assert session.transport.encrypted
        finally:
            await alice.close()
