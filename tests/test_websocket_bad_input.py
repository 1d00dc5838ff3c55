"""Bad input on /xmpp-websocket, each with its RFC 7395 / RFC 6120 answer; every time, other users (one on
TCP, one on WebSocket) keep chatting."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import slixmpp
from conftest import DOMAIN, PASSWORD, Clients, make_config, started_server, wait_for
from wsclient import FRAMING, WsClient, message, q

from nitro.server import Server

OPEN = f"<open xmlns='{FRAMING}' to='{DOMAIN}' version='1.0'/>"


def ws_url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.config.http.port}/xmpp-websocket"


class Bystanders:
    """Bob on TCP and carol on WebSocket, logged in before the bad client comes."""

    def __init__(self, bob: slixmpp.ClientXMPP, carol: WsClient) -> None:
        self.bob = bob
        self.carol = carol
        self.bob_inbox: list[str] = []
        bob.add_event_handler("message", lambda msg: self.bob_inbox.append(str(msg["body"])))

    async def still_chatting(self) -> None:
        text = f"still here {len(self.bob_inbox)}"
        await self.carol.send(message(str(self.bob.boundjid.bare), text))
        await wait_for(lambda: text in self.bob_inbox)
        self.bob.send_message(mto=slixmpp.JID(self.carol.jid), mbody=text, mtype="chat")
        await self.carol.until(lambda e: e.findtext(q("body")) == text)


async def serving(server: Server) -> AsyncIterator[tuple[Bystanders, Clients]]:
    pool = Clients(server)
    await pool.user("alice")
    bob = await pool.login(await pool.user("bob"))
    await pool.user("carol")
    carol = await WsClient.connect(ws_url(server))
    try:
        await carol.login("carol", PASSWORD)
        yield Bystanders(bob, carol), pool
    finally:
        await carol.close()
        await pool.close_all()


@pytest.fixture
async def others(server: Server) -> AsyncIterator[Bystanders]:
    async for bystanders, _pool in serving(server):
        yield bystanders


async def bad_client(server: Server, **options: object) -> WsClient:
    return await WsClient.connect(ws_url(server), **options)  # type: ignore[arg-type]


# -- the handshake (RFC 7395 §3.1, §3.2) -------------------------------------------------------------


@pytest.mark.parametrize("protocols", [(), ("chat",), ("xmpp-draft", "soap")])
async def test_a_websocket_without_the_xmpp_subprotocol_is_refused(
    server: Server, others: Bystanders, protocols: tuple[str, ...]
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await bad_client(server, protocols=protocols)
    assert refused.value.status == 400
    await others.still_chatting()


async def test_the_xmpp_subprotocol_is_chosen_among_others(server: Server, others: Bystanders) -> None:
    client = await bad_client(server, protocols=("chat", "xmpp"))
    try:
        assert client.ws.protocol == "xmpp"
        assert await client.login("alice", PASSWORD) == f"alice@{DOMAIN}/ws"
    finally:
        await client.close()
    await others.still_chatting()


async def test_a_plain_get_says_what_the_url_is_for(server: Server) -> None:
    async with aiohttp.ClientSession() as session, session.get(ws_url(server).replace("ws:", "http:")) as got:
        assert got.status == 200
        assert "WebSocket" in await got.text()


# -- messages (RFC 7395 §3.3) -----------------------------------------------------------------------


async def opened(server: Server) -> WsClient:
    client = await bad_client(server)
    await client.open()
    return client


async def logged_in(server: Server) -> WsClient:
    client = await bad_client(server)
    await client.login("alice", PASSWORD)
    return client


Start = Callable[[Server], Awaitable[WsClient]]


@pytest.mark.parametrize("start", [bad_client, opened, logged_in], ids=["before-open", "opened", "bound"])
@pytest.mark.parametrize(
    ("data", "condition"),
    [
        ("<presence/><presence/>", "not-well-formed"),  # two elements
        ("<message to='bob@localhost'><body>half", "not-well-formed"),  # half of one
        ("</stream:stream>", "not-well-formed"),
        ("<!DOCTYPE x [<!ENTITY a 'b'>]><message>&a;</message>", "restricted-xml"),
        ("<message><body>&undeclared;</body></message>", "restricted-xml"),
        ("<message><!-- a comment --></message>", "restricted-xml"),
    ],
)
async def test_a_message_that_is_not_one_clean_element_ends_the_stream(
    server: Server, others: Bystanders, start: Start, data: str, condition: str
) -> None:
    client = await start(server)
    try:
        await client.send_raw(data)
        assert (await client.stream_error())[0] == condition
    finally:
        await client.close()
    await others.still_chatting()


@pytest.mark.parametrize("start", [bad_client, logged_in], ids=["before-open", "bound"])
async def test_a_binary_message_is_not_xmpp(server: Server, others: Bystanders, start: Start) -> None:
    client = await start(server)
    try:
        await client.ws.send_bytes(b"<presence/>")
        condition, _ = await client.stream_error()
        assert condition == "not-well-formed"
        assert client.ws.close_code == aiohttp.WSCloseCode.UNSUPPORTED_DATA  # 1003, as Prosody
    finally:
        await client.close()
    await others.still_chatting()


async def test_a_text_message_that_is_not_utf8_is_not_well_formed(server: Server, others: Bystanders) -> None:
    client = await logged_in(server)
    try:
        await client.ws.send_frame(b"<message><body>\xff\xfe</body></message>", aiohttp.WSMsgType.TEXT)
        assert (await client.stream_error())[0] == "not-well-formed"
    finally:
        await client.close()
    await others.still_chatting()


async def test_a_message_over_the_stanza_limit_is_a_policy_violation(tmp_path: Path) -> None:
    async with started_server(make_config(tmp_path, c2s={"max_stanza_bytes": 10_000})) as server:
        async for others, _pool in serving(server):
            client = await logged_in(server)
            try:
                await client.send(message("bob@localhost", "x" * 12_000))
                assert (await client.stream_error())[0] == "policy-violation"
            finally:
                await client.close()
            await others.still_chatting()


async def test_a_message_far_over_the_limit_is_refused_by_the_websocket_layer(tmp_path: Path) -> None:
    async with started_server(make_config(tmp_path, c2s={"max_stanza_bytes": 10_000})) as server:
        async for others, _pool in serving(server):
            client = await logged_in(server)
            try:
                await client.send(message("bob@localhost", "x" * 30_000))
                closing = await client.closed()
                assert closing.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG  # 1009, never buffered whole
            finally:
                await client.close()
            await others.still_chatting()


# -- the stream header (RFC 7395 §3.4; RFC 6120 §4.7, §4.9) ---------------------------------------------


@pytest.mark.parametrize(
    ("header", "condition"),
    [
        (f"<open xmlns='{FRAMING}' to='example.org' version='1.0'/>", "host-unknown"),
        (f"<open xmlns='{FRAMING}' version='1.0'/>", "host-unknown"),
        (f"<open xmlns='{FRAMING}' to='{DOMAIN}'/>", "unsupported-version"),
        (f"<open xmlns='{FRAMING}' to='{DOMAIN}' version='2.0'/>", "unsupported-version"),
    ],
)
async def test_a_bad_open_gets_our_open_then_the_error(
    server: Server, others: Bystanders, header: str, condition: str
) -> None:
    client = await bad_client(server)
    try:
        await client.send_raw(header)
        found, before = await client.stream_error()
        assert found == condition
        assert f'xmlns="{FRAMING}"' in before[0] or f"xmlns='{FRAMING}'" in before[0]  # RFC 7395 §3.5
        assert "<open" in before[0]
    finally:
        await client.close()
    await others.still_chatting()


async def test_a_stanza_before_open_is_refused(server: Server, others: Bystanders) -> None:
    client = await bad_client(server)
    try:
        await client.send(message("bob@localhost", "too early"))
        assert (await client.stream_error())[0] == "policy-violation"
    finally:
        await client.close()
    await others.still_chatting()


# -- encryption: plain HTTP is trusted only from loopback or a trusted proxy saying https ----------------


async def test_plain_http_through_a_trusted_proxy_is_refused_before_authentication(tmp_path: Path) -> None:
    config = make_config(tmp_path, http={"trusted_proxies": ["127.0.0.0/8"]})
    async with started_server(config) as server:
        async for others, _pool in serving(server):
            client = await bad_client(server, headers={"X-Forwarded-Proto": "http"})
            try:
                await client.send_raw(OPEN)
                condition, before = await client.stream_error()
                assert condition == "policy-violation"  # no feature could lead anywhere without TLS
                assert len(before) == 1  # our <open/>, and no features
            finally:
                await client.close()
            await others.still_chatting()


async def test_https_at_a_trusted_proxy_counts_as_encrypted_and_names_the_client(tmp_path: Path) -> None:
    config = make_config(tmp_path, http={"trusted_proxies": ["127.0.0.1"]})
    async with started_server(config) as server:
        await Clients(server).user("alice")
        headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7, 127.0.0.1"}
        client = await bad_client(server, headers=headers)
        try:
            await client.open()
            assert "PLAIN" in client.mechanisms()
            await client.authenticate("alice", PASSWORD, "PLAIN")
            await client.bind("proxied")
            (session,) = server.sessions
            assert (session.transport.peer_host, session.transport.encrypted) == ("203.0.113.7", True)
        finally:
            await client.close()


async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(server: Server) -> None:
    await Clients(server).user("alice")
    headers = {"X-Forwarded-Proto": "http", "X-Forwarded-For": "203.0.113.7"}
    client = await bad_client(server, headers=headers)
    try:
        await client.login("alice", PASSWORD)
        (session,) = server.sessions
        assert (session.transport.peer_host, session.transport.encrypted) == ("127.0.0.1", True)
    finally:
        await client.close()
