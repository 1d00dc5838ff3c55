"""The HTTP server on [http]: XEP-0156 discovery, the web client page, who the client is behind a proxy, and
the limits that cut off slow or oversized requests while other users keep chatting."""

from __future__ import annotations

import asyncio
import io
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import slixmpp
from conftest import DOMAIN, PASSWORD, Clients, make_config, started_server, wait_for
from lxml import etree

from nitro.config import ConfigError
from nitro.server import Server
from nitro.transports.forwarded import Peer, resolve_peer, trusted_networks

XRD = "http://docs.oasis-open.org/ns/xri/xrd-1.0"
REL_WEBSOCKET = "urn:xmpp:alt-connections:websocket"
REL_BOSH = "urn:xmpp:alt-connections:xbosh"


def base(server: Server) -> str:
    return f"http://127.0.0.1:{server.config.http.port}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# -- who the client is (pure) ----------------------------------------------------------------------

PROXIES = trusted_networks(["10.0.0.0/8", "::1"])


@pytest.mark.parametrize(
    ("peer", "tls", "headers", "expected"),
    [
        ("198.51.100.4", False, {}, Peer("198.51.100.4", False, "http")),
        ("198.51.100.4", True, {}, Peer("198.51.100.4", True, "https")),
        ("127.0.0.1", False, {}, Peer("127.0.0.1", True, "http")),  # loopback: never left the machine
        ("::1", False, {}, Peer("::1", True, "http")),
        # an untrusted peer's forwarded headers mean nothing
        ("198.51.100.4", False, {"X-Forwarded-Proto": "https"}, Peer("198.51.100.4", False, "http")),
        ("127.0.0.1", False, {"X-Forwarded-For": "203.0.113.9"}, Peer("127.0.0.1", True, "http")),
        # a trusted proxy's say decides, and the client is the last address before the trusted ones
        ("10.1.2.3", False, {"X-Forwarded-Proto": "https"}, Peer("10.1.2.3", True, "https")),
        ("10.1.2.3", False, {"X-Forwarded-Proto": "http"}, Peer("10.1.2.3", False, "http")),
        ("10.1.2.3", False, {}, Peer("10.1.2.3", False, "http")),
        (
            "10.1.2.3",
            False,
            {"X-Forwarded-Proto": "https", "X-Forwarded-For": "6.6.6.6, 203.0.113.9, 10.9.9.9"},
            Peer("203.0.113.9", True, "https"),
        ),
        ("::1", True, {"X-Forwarded-Proto": "http"}, Peer("::1", False, "http")),
        ("::ffff:10.0.0.1", False, {"X-Forwarded-Proto": "https"}, Peer("::ffff:10.0.0.1", True, "https")),
    ],
)
def test_who_the_client_is_and_whether_its_path_is_encrypted(
    peer: str, tls: bool, headers: dict[str, str], expected: Peer
) -> None:
    assert resolve_peer(peer, tls, headers, PROXIES) == expected


@pytest.mark.parametrize(
    ("section", "complaint"),
    [
        ({"trusted_proxies": ["10.0.0.0/33"]}, "trusted_proxies"),
        ({"trusted_proxies": ["proxy.example"]}, "trusted_proxies"),
        ({"max_body_bytes": 1000}, "max_body_bytes"),
        ({"header_timeout": 0}, "header_timeout"),
        ({"port": 70000}, "port"),
        ({"hots": "127.0.0.1"}, "hots"),
    ],
)
def test_a_bad_http_section_is_a_startup_error(
    tmp_path: Path, section: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint):
        make_config(tmp_path, http=section)


# -- XEP-0156 discovery ----------------------------------------------------------------------------


async def test_host_meta_names_the_websocket_url_as_the_client_reached_us(
    server: Server, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{base(server)}/.well-known/host-meta") as got:
        assert got.status == 200
        assert got.content_type == "application/xrd+xml"
        assert got.headers["Access-Control-Allow-Origin"] == "*"
        xrd = etree.fromstring(await got.read())
    assert xrd.tag == f"{{{XRD}}}XRD"
    links = {link.get("rel"): link.get("href") for link in xrd.iter(f"{{{XRD}}}Link")}
    port = server.config.http.port
    assert links[REL_WEBSOCKET] == f"ws://127.0.0.1:{port}/xmpp-websocket"
    assert links[REL_BOSH] == f"http://127.0.0.1:{port}/http-bind"

    async with http.get(
        f"{base(server)}/.well-known/host-meta.json", headers={"Host": "chat.example"}
    ) as got:
        assert got.status == 200
        assert got.content_type == "application/json"
        assert got.headers["Access-Control-Allow-Origin"] == "*"
        jrd = json.loads(await got.text())
    links = {link["rel"]: link["href"] for link in jrd["links"]}
    assert links[REL_WEBSOCKET] == "ws://chat.example/xmpp-websocket"


async def test_behind_a_trusted_tls_proxy_the_urls_are_secure(tmp_path: Path) -> None:
    config = make_config(tmp_path, http={"trusted_proxies": ["127.0.0.1"]})
    async with started_server(config) as server, aiohttp.ClientSession() as http:
        headers = {"Host": "chat.example", "X-Forwarded-Proto": "https"}
        async with http.get(f"{base(server)}/.well-known/host-meta.json", headers=headers) as got:
            links = {link["rel"]: link["href"] for link in json.loads(await got.text())["links"]}
        assert links[REL_WEBSOCKET] == "wss://chat.example/xmpp-websocket"
        assert links[REL_BOSH] == "https://chat.example/http-bind"


async def test_https_on_the_tls_port(tmp_path: Path) -> None:
    async with started_server(make_config(tmp_path)) as server, aiohttp.ClientSession() as http:
        context = ssl.create_default_context(cafile=str(server.config.path(server.config.tls.cert)))
        url = f"https://127.0.0.1:{server.config.http.tls_port}/.well-known/host-meta.json"
        async with http.get(url, ssl=context, server_hostname=DOMAIN) as got:
            links = {link["rel"]: link["href"] for link in json.loads(await got.text())["links"]}
        assert links[REL_WEBSOCKET] == f"wss://127.0.0.1:{server.config.http.tls_port}/xmpp-websocket"


async def test_a_disabled_http_section_listens_nowhere(tmp_path: Path) -> None:
    config = make_config(tmp_path, http={"enabled": False})
    async with started_server(config) as server:
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", server.config.http.port)


# -- limits: slow or oversized requests are cut off ---------------------------------------------------


async def chat_still_works(clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"))
    bob = await clients.login(await clients.user("bob"))
    got: list[str] = []
    bob.add_event_handler("message", lambda msg: got.append(str(msg["body"])))
    alice.send_message(mto=slixmpp.JID(f"bob@{DOMAIN}"), mbody="unbothered", mtype="chat")
    await wait_for(lambda: got == ["unbothered"])


async def read_all(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything until the server closes the connection (TimeoutError if it does not within `timeout`)."""
    async with asyncio.timeout(timeout):
        return await reader.read()


async def test_a_client_too_slow_with_its_headers_is_disconnected(tmp_path: Path) -> None:
    config = make_config(tmp_path, http={"header_timeout": 0.5})
    async with started_server(config) as server:
        pool = Clients(server)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.config.http.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n")  # and never the blank line
            started = asyncio.get_running_loop().time()
            assert await read_all(reader, 5) == b""
            assert asyncio.get_running_loop().time() - started < 3
            writer.close()
            await chat_still_works(pool)
        finally:
            await pool.close_all()


async def test_a_silent_connection_is_disconnected(tmp_path: Path) -> None:
    config = make_config(tmp_path, http={"header_timeout": 0.5})
    async with started_server(config) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.config.http.port)
        assert await read_all(reader, 5) == b""
        writer.close()


async def test_a_body_too_slow_to_arrive_gets_408(tmp_path: Path) -> None:
    config = make_config(tmp_path, bosh={"read_timeout": 0.5})
    async with started_server(config) as server:
        pool = Clients(server)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.config.http.port)
            writer.write(
                b"POST /http-bind HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
                b"Content-Length: 100\r\n\r\n<body"
            )
            answer = await read_all(reader, 10)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
            writer.close()
            await chat_still_works(pool)
        finally:
            await pool.close_all()


async def test_an_oversized_body_gets_413(
    server: Server, clients: Clients, http: aiohttp.ClientSession
) -> None:
    big = b"<body>" + b"x" * server.config.bosh.max_body_bytes + b"</body>"
    headers = {"Content-Type": "text/xml"}
    async with http.post(f"{base(server)}/http-bind", data=io.BytesIO(big), headers=headers) as got:
        assert got.status == 413
    await chat_still_works(clients)


# -- the web client -----------------------------------------------------------------------------------

needs_assets = pytest.mark.skipif(
    not (Path(__file__).resolve().parent.parent / "var/web/converse.js/dist/converse.min.js").is_file(),
    reason="the web client is not installed: `make web-client` (run by `make test`)",
)


def page_options(html: str) -> dict[str, object]:
    start = html.index("converse.initialize(") + len("converse.initialize(")
    options: dict[str, object] = json.JSONDecoder().raw_decode(html, start)[0]
    return options


@needs_assets
async def test_the_web_client_is_configured_for_this_server(
    server: Server, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{base(server)}/") as got:
        assert got.status == 200
        assert got.content_type == "text/html"
        html = await got.text()
    options = page_options(html)
    assert options["websocket_url"] == f"ws://127.0.0.1:{server.config.http.port}/xmpp-websocket"
    assert options["bosh_service_url"] == f"http://127.0.0.1:{server.config.http.port}/http-bind"
    assert options["locked_domain"] == DOMAIN
    assert options["view_mode"] == "fullscreen"
    assert options["allow_registration"] is True
    for asset in ("converse.min.js", "converse.min.css"):
        assert f"/converse/{asset}" in html
        async with http.get(f"{base(server)}/converse/{asset}") as got:
            assert got.status == 200
    async with http.get(f"{base(server)}/?transport=bosh") as got:
        options = page_options(await got.text())
        assert "websocket_url" not in options
        assert "bosh_service_url" in options
    async with http.get(f"{base(server)}/?transport=carrier-pigeon") as got:
        assert got.status == 400


@needs_assets
async def test_a_hostile_host_header_cannot_break_out_of_the_page(
    server: Server, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{base(server)}/", headers={"Host": "x</script><script>alert(1)//"}) as got:
        html = await got.text()
    assert "</script><script>alert" not in html


async def test_without_its_files_the_web_client_says_how_to_install_them(tmp_path: Path) -> None:
    config = make_config(tmp_path, http={"web_client_dir": str(tmp_path / "nothing")})
    async with started_server(config) as server, aiohttp.ClientSession() as http:
        async with http.get(f"{base(server)}/") as got:
            assert got.status == 503
            assert "make web-client" in await got.text()
        await Clients(server).user("alice")  # and the rest works: a WebSocket login
        from wsclient import WsClient

        client = await WsClient.connect(f"ws://127.0.0.1:{server.config.http.port}/xmpp-websocket")
        try:
            assert await client.login("alice", PASSWORD) == f"alice@{DOMAIN}/ws"
        finally:
            await client.close()


async def test_the_web_client_can_be_turned_off(tmp_path: Path) -> None:
    config = make_config(tmp_path, http={"web_client": False})
    async with started_server(config) as server, aiohttp.ClientSession() as http:
        got = await http.get(f"{base(server)}/")
        assert got.status == 404
        got.release()
