"""BOSH bad input over real HTTP: each case gets its XEP-0124 condition, and other users keep working."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import slixmpp
from aiohttp import web
from conftest import DOMAIN, PASSWORD, Clients, make_config, started_server, wait_for
from lxml import etree

from integration.boshclient import CLIENT, HTTPBIND, SASL, STREAM, BoshClient, Terminated, local
from nitro.server import Server
from nitro.transports import bosh
from nitro.xmpp.jid import JID

STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"


@contextlib.asynccontextmanager
async def endpoint_on(
    server: Server, client_info: bosh.ClientInfo = bosh.direct_client
) -> AsyncIterator[tuple[Server, str, aiohttp.ClientSession]]:
    """/http-bind of `server` on a loopback port, and an HTTP client."""
    async with aiohttp.ClientSession() as http:
        app = web.Application()
        bosh.add_routes(app, server, client_info=client_info)
        runner = web.AppRunner(app, shutdown_timeout=5.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            yield server, f"http://{host}:{port}{bosh.PATH}", http
        finally:
            await runner.cleanup()


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, client_info: bosh.ClientInfo = bosh.direct_client, **bosh_config: object
) -> AsyncIterator[tuple[Server, str, aiohttp.ClientSession]]:
    """A server of its own with these [bosh] settings."""
    config = make_config(tmp_path, bosh=dict(bosh_config))
    async with started_server(config) as server, endpoint_on(server, client_info) as running:
        yield running


@pytest.fixture
async def setup(server: Server) -> AsyncIterator[tuple[Server, str, aiohttp.ClientSession]]:
    async with endpoint_on(server) as running:
        yield running


async def bystander(clients: Clients) -> slixmpp.ClientXMPP:
    """A TCP user logged in before the bad input: it must keep working."""
    return await clients.login(await clients.user("carol"))


async def still_working(client: slixmpp.ClientXMPP) -> None:
    await client.plugin["xep_0199"].send_ping(slixmpp.JID(DOMAIN), timeout=5)


def terminal_of(data: bytes) -> tuple[str | None, str | None]:
    body = etree.fromstring(data)
    assert body.tag == f"{{{HTTPBIND}}}body"
    return body.get("type"), body.get("condition")


async def logged_in(server: Server, http: aiohttp.ClientSession, url: str, name: str = "alice") -> BoshClient:
    await Clients(server).user(name)
    client = BoshClient(http, url)
    await client.login(name, PASSWORD, "web", poll=False)
    return client


async def test_an_unknown_sid_is_item_not_found(
    setup: tuple[Server, str, aiohttp.ClientSession], clients: Clients
) -> None:
    _server, url, http = setup
    carol = await bystander(clients)
    response = await http.post(url, data=f"<body xmlns='{HTTPBIND}' rid='5' sid='nope'/>")
    assert response.status == 200
    assert terminal_of(await response.read()) == ("terminate", "item-not-found")  # XEP-0124 §17.2
    await still_working(carol)


async def test_a_terminated_sid_is_item_not_found(setup: tuple[Server, str, aiohttp.ClientSession]) -> None:
    server, url, http = setup
    alice = await logged_in(server, http, url)
    await alice.terminate()
    assert alice.terminal is not None
    assert terminal_of(etree.tostring(alice.terminal)) == ("terminate", None)
    late = await alice.post(alice.next_rid())
    assert (late.get("type"), late.get("condition")) == ("terminate", "item-not-found")


@pytest.mark.parametrize(
    "data",
    [
        b"<message xmlns='jabber:client'/>",  # no <body/>
        b"<body xmlns='jabber:client' rid='1'/>",  # wrong namespace
        f"<body xmlns='{HTTPBIND}' rid='1'><message>".encode(),  # malformed
        f"<!DOCTYPE body [<!ENTITY a 'b'>]><body xmlns='{HTTPBIND}' rid='1'>&a;</body>".encode(),
        f"<body xmlns='{HTTPBIND}'/>".encode(),  # no rid
        b"",
    ],
)
async def test_what_is_not_a_body_is_bad_request(
    setup: tuple[Server, str, aiohttp.ClientSession], clients: Clients, data: bytes
) -> None:
    _server, url, http = setup
    carol = await bystander(clients)
    response = await http.post(url, data=data, headers={"Content-Type": "text/xml; charset=utf-8"})
    assert response.status == 200
    assert terminal_of(await response.read()) == ("terminate", "bad-request")
    await still_working(carol)


@pytest.mark.parametrize(
    "content_type", ["application/json", "multipart/form-data; boundary=x", "text/xml; charset=iso-8859-1"]
)
async def test_a_wrong_content_type_is_refused(
    setup: tuple[Server, str, aiohttp.ClientSession], content_type: str
) -> None:
    _server, url, http = setup
    client = BoshClient(http, url)
    response = await client.post_raw(client.body(1, to=DOMAIN, ver="1.11"), content_type=content_type)
    assert response.status == 415
    assert terminal_of(await response.read()) == ("terminate", "bad-request")


@pytest.mark.parametrize("content_type", [None, "text/xml", "application/xml; charset=UTF-8", "text/plain"])
async def test_the_content_types_xep_0124_names_are_accepted(
    setup: tuple[Server, str, aiohttp.ClientSession], content_type: str | None
) -> None:
    _server, url, http = setup
    client = BoshClient(http, url)
    response = await client.post_raw(
        client.body(1, to=DOMAIN, ver="1.11", wait="5"), content_type=content_type
    )
    assert response.status == 200
    created = etree.fromstring(await response.read())
    assert created.get("sid")
    assert created.find(f"{{{STREAM}}}features") is not None


async def test_a_body_over_the_limit_is_413_and_the_session_goes_on(tmp_path: Path) -> None:
    async with serving(tmp_path, max_body_bytes=20000) as (server, url, http):
        alice = await logged_in(server, http, url)
        big = "x" * 30000
        rid = alice.next_rid()
        data = alice.body(rid, [f"<message xmlns='{CLIENT}' to='bob@localhost'><body>{big}</body></message>"])
        response = await alice.post_raw(data)
        assert response.status == 413  # refused before it reached the session
        ping = f"<iq xmlns='{CLIENT}' type='get' id='p' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
        (pong,) = await alice.post(rid, [ping])  # that rid with a smaller body
        assert pong.get("type") == "result"


async def test_a_stanza_over_the_limit_ends_the_session_with_policy_violation(
    setup: tuple[Server, str, aiohttp.ClientSession],
) -> None:
    server, url, http = setup
    alice = await logged_in(server, http, url)
    big = "x" * (server.config.c2s.max_stanza_bytes + 20000)
    response = await alice.post(alice.next_rid(), [f"<message xmlns='{CLIENT}'><body>{big}</body></message>"])
    assert (response.get("type"), response.get("condition")) == ("terminate", "policy-violation")
    late = await alice.post(alice.next_rid())
    assert late.get("condition") in ("policy-violation", "item-not-found")  # the session is over


async def test_a_rid_outside_the_window_ends_the_session(
    setup: tuple[Server, str, aiohttp.ClientSession], clients: Clients
) -> None:
    server, url, http = setup
    carol = await bystander(clients)
    alice = await logged_in(server, http, url)
    response = await alice.post(alice.next_rid() + 5)
    assert (response.get("type"), response.get("condition")) == ("terminate", "item-not-found")  # §14.2
    await wait_for(lambda: server.sessions.get(JID.parse(alice.jid)) is None)  # the connection is lost
    await still_working(carol)


async def test_a_repeated_rid_gets_the_same_response(
    setup: tuple[Server, str, aiohttp.ClientSession],
) -> None:
    server, url, http = setup
    alice = await logged_in(server, http, url)
    rid = alice.next_rid()
    ping = f"<iq xmlns='{CLIENT}' type='get' id='p1' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
    first = await alice.post_raw(alice.body(rid, [ping]))
    again = await alice.post_raw(alice.body(rid, [ping]))  # §14.3: the response was lost, the request resent
    assert await again.read() == await first.read()
    (pong,) = etree.fromstring(await again.read())
    assert (pong.get("id"), pong.get("type")) == ("p1", "result")  # the ping was handled once, answered twice


async def test_more_simultaneous_requests_than_allowed_is_policy_violation(tmp_path: Path) -> None:
    async with serving(tmp_path, max_hold=2) as (server, url, http):
        await Clients(server).user("alice")
        alice = BoshClient(http, url)
        creation = await alice.create(hold="2")
        assert (creation.get("hold"), creation.get("requests")) == ("2", "3")
        first, second = alice.next_rid(), alice.next_rid()
        held = [asyncio.ensure_future(alice.post(rid)) for rid in (first, second)]  # both held (hold = 2)
        await asyncio.sleep(0.2)
        alice.next_rid()  # never sent: a gap
        gapped = asyncio.ensure_future(alice.post(alice.next_rid()))  # waits for the gap: three open
        await asyncio.sleep(0.2)
        fourth = await alice.post(alice.next_rid())
        assert (fourth.get("type"), fourth.get("condition")) == ("terminate", "policy-violation")  # §11
        for answered in await asyncio.gather(*held, gapped):
            assert answered.get("condition") == "policy-violation"


async def test_a_restart_before_sasl_success_is_policy_violation(
    setup: tuple[Server, str, aiohttp.ClientSession], clients: Clients
) -> None:
    _server, url, http = setup
    carol = await bystander(clients)
    client = BoshClient(http, url)
    await client.create()
    with pytest.raises(Terminated) as ended:
        await client.step(xmpp__restart="true")
    assert ended.value.terminal.get("condition") == "policy-violation"  # XEP-0206 §5
    await still_working(carol)


async def test_a_stream_error_travels_as_remote_stream_error(
    setup: tuple[Server, str, aiohttp.ClientSession],
) -> None:
    server, url, http = setup
    alice = await logged_in(server, http, url)
    with pytest.raises(Terminated) as ended:
        await alice.step([f"<message xmlns='{CLIENT}' from='mallory@localhost/x' to='bob@localhost'/>"])
    terminal = ended.value.terminal
    assert terminal.get("condition") == "remote-stream-error"  # XEP-0124 §17.2, XEP-0206 §7
    assert terminal.find(f"{{{STREAM}}}error/{{{STREAM_ERRORS}}}invalid-from") is not None


async def test_plain_http_from_afar_may_not_authenticate(tmp_path: Path) -> None:
    """Neither TLS nor loopback nor a trusted proxy: require_encryption applies as on TCP."""
    async with serving(tmp_path, client_info=lambda _request: ("203.0.113.7", False)) as (server, url, http):
        await Clients(server).user("alice")
        client = BoshClient(http, url)
        # No feature could lead anywhere (no STARTTLS over HTTP): the session ends at once, as Prosody
        # closes a stream it has no feature for, instead of offering SASL it would then refuse.
        with pytest.raises(Terminated) as ended:
            await client.create()
        assert ended.value.terminal.find(f"{{{STREAM}}}error/{{{STREAM_ERRORS}}}policy-violation") is not None
        assert ended.value.terminal.find(f".//{{{SASL}}}mechanisms") is None


async def test_a_secure_session_refuses_a_request_in_the_clear(tmp_path: Path) -> None:
    def behind_proxy(request: web.Request) -> tuple[str, bool]:
        return "203.0.113.8", request.headers.get("X-Forwarded-Proto") == "https"

    async with serving(tmp_path, client_info=behind_proxy) as (_server, url, http):
        client = BoshClient(http, url)
        rid = client.next_rid()
        https = {"X-Forwarded-Proto": "https", "Content-Type": "text/xml"}
        created = await http.post(url, data=client.body(rid, to=DOMAIN, ver="1.11", wait="5"), headers=https)
        client.sid = etree.fromstring(await created.read()).get("sid")
        clear = await http.post(url, data=client.body(rid + 1), headers={"Content-Type": "text/xml"})
        assert clear.status == 403  # XEP-0124 §15.1: not even a terminal body to a possible attacker
        secure = await http.post(url, data=client.body(rid + 1, type="terminate"), headers=https)
        assert etree.fromstring(await secure.read()).get("type") == "terminate"


async def test_cors_preflight_and_response_headers(setup: tuple[Server, str, aiohttp.ClientSession]) -> None:
    _server, url, http = setup
    preflight = await http.options(
        url, headers={"Origin": "https://chat.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == "Content-Type"
    assert int(preflight.headers["Access-Control-Max-Age"]) > 0
    client = BoshClient(http, url)
    response = await client.post_raw(client.body(1, to=DOMAIN, ver="1.11", wait="5", content="text/html"))
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert (
        response.headers["Content-Type"] == "text/xml; charset=utf-8"
    )  # never a page a browser would render


async def test_only_configured_origins_are_allowed(tmp_path: Path) -> None:
    async with serving(tmp_path, cors_origins=["https://chat.example"]) as (_server, url, http):
        allowed = await http.options(url, headers={"Origin": "https://chat.example"})
        assert allowed.headers["Access-Control-Allow-Origin"] == "https://chat.example"
        assert allowed.headers["Vary"] == "Origin"
        other = await http.options(url, headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers


async def test_a_legacy_client_gets_http_error_codes(
    setup: tuple[Server, str, aiohttp.ClientSession],
) -> None:
    _server, url, http = setup
    client = BoshClient(http, url)
    rid = client.next_rid()
    created = await client.post_raw(client.body(rid, to=DOMAIN, wait="5", hold="1"))  # no 'ver' (§17.1)
    client.sid = etree.fromstring(await created.read()).get("sid")
    beyond = await client.post_raw(client.body(rid + 9))
    assert beyond.status == 404


async def test_shutdown_ends_every_session_with_system_shutdown(tmp_path: Path) -> None:
    async with serving(tmp_path) as (server, url, http):
        alice = await logged_in(server, http, url)
        await logged_in(server, http, url, "bob")  # between two requests: nothing held
        waiting = asyncio.ensure_future(alice.post(alice.next_rid()))  # held by the server
        await asyncio.sleep(0.2)
        began = asyncio.get_running_loop().time()
        await server.shutdown()
        assert asyncio.get_running_loop().time() - began < 2.0  # nobody waits for bob's next request
        ended = await asyncio.wait_for(waiting, 5)
        assert (ended.get("type"), ended.get("condition")) == ("terminate", "system-shutdown")  # §17.2
        assert not server.connections


async def test_http_shutdown_ends_held_requests_with_system_shutdown(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with started_server(config) as server, aiohttp.ClientSession() as http:
        app = web.Application()
        bosh.add_routes(app, server)
        runner = web.AppRunner(app, shutdown_timeout=5.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        alice = await logged_in(server, http, f"http://{host}:{port}{bosh.PATH}")
        waiting = asyncio.ensure_future(alice.post(alice.next_rid()))
        await asyncio.sleep(0.2)
        await asyncio.wait_for(runner.cleanup(), 10)  # on_shutdown answers it before the wait for handlers
        ended = await asyncio.wait_for(waiting, 5)
        assert ended.get("condition") == "system-shutdown"
        assert not server.connections
        assert local(ended) == "body"
