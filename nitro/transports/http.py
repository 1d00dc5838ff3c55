"""The HTTP server on [http] (aiohttp), plain and TLS: WebSocket, BOSH and the web client, XEP-0156 connection
discovery, and the limits that cut off slow or oversized requests."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiohttp import web
from lxml import etree

from nitro.transports import bosh, webclient, websocket
from nitro.transports.forwarded import Network, connection_urls, peer_of, trusted_networks
from nitro.transports.listeners import Listeners, close_after_handover, sites

if TYPE_CHECKING:
    from nitro.core.context import Core

log = logging.getLogger(__name__)

SHUTDOWN_GRACE: Final = 5.0  # seconds requests still running at shutdown get before they are cancelled
LINGER: Final = 2.0  # seconds an unread request body is still read (and dropped) before the connection closes

# XEP-0156 §3: the link relations of the two HTTP connection methods, in XRD (RFC 6415) and JRD form.
XRD: Final = "http://docs.oasis-open.org/ns/xri/xrd-1.0"
RELATIONS: Final = {
    "websocket": "urn:xmpp:alt-connections:websocket",
    "bosh": "urn:xmpp:alt-connections:xbosh",
}
CORS: Final = {"Access-Control-Allow-Origin": "*"}


@dataclass(frozen=True, slots=True)
class HttpEndpoint:
    """Where the HTTP server listens: (host, port) of each site, the plain one first."""

    addresses: tuple[tuple[str, int], ...]


class Discovery:
    """XEP-0156 §3: /.well-known/host-meta (XRD) and host-meta.json (JRD) name the WebSocket and BOSH URLs,
    absolute, as the client reached us (the scheme a trusted proxy reports, the Host header)."""

    def __init__(self, app: web.Application, networks: tuple[Network, ...]) -> None:
        self._app = app
        self._networks = networks

    def add_routes(self) -> None:
        self._app.router.add_get("/.well-known/host-meta", self.xrd)
        self._app.router.add_get("/.well-known/host-meta.json", self.jrd)

    def links(self, request: web.Request) -> list[tuple[str, str]]:
        return [(RELATIONS[kind], url) for kind, url in connection_urls(request, self._networks).items()]

    async def xrd(self, request: web.Request) -> web.Response:
        root = etree.Element(f"{{{XRD}}}XRD", nsmap={None: XRD})  # type: ignore[dict-item]
        for rel, href in self.links(request):
            etree.SubElement(root, f"{{{XRD}}}Link", rel=rel, href=href)
        body = etree.tostring(root, encoding="utf-8", xml_declaration=True)
        return web.Response(body=body, content_type="application/xrd+xml", charset="utf-8", headers=CORS)

    async def jrd(self, request: web.Request) -> web.Response:
        links = [{"rel": rel, "href": href} for rel, href in self.links(request)]
        return web.Response(text=json.dumps({"links": links}), content_type="application/json", headers=CORS)


def make_app(server: Core) -> web.Application:
    """The application: discovery, WebSocket, BOSH (told who is behind a trusted proxy), the web client."""
    settings = server.config.http
    networks = trusted_networks(settings.trusted_proxies)

    def client_info(request: web.Request) -> tuple[str, bool]:
        peer = peer_of(request, networks)
        return peer.host, peer.encrypted

    app = web.Application(client_max_size=settings.max_body_bytes)
    Discovery(app, networks).add_routes()
    websocket.add_routes(app, server)
    bosh.add_routes(app, server, client_info=client_info)
    webclient.add_routes(app, server)
    return app


@asynccontextmanager
async def serve_http(server: Core, listening: Listeners | None = None) -> AsyncIterator[HttpEndpoint | None]:
    """Serve HTTP for the duration of the scope (nothing when [http] is disabled). On exit: stop listening,
    close the web transports' streams (their modules hook the app's on_shutdown), give running requests
    SHUTDOWN_GRACE seconds, cancel the rest."""
    settings = server.config.http
    if not settings.enabled or not (settings.port or settings.tls_port):
        yield None
        return
    listening = listening if listening is not None else Listeners()  # what an upgrade hands over
    app = make_app(server)
    app.middlewares.append(close_after_handover(listening))
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_GRACE,
        keepalive_timeout=settings.header_timeout,  # also bounds the wait for a request's headers
        lingering_time=LINGER,
        max_field_size=8190,
        max_line_size=8190,
    )
    await runner.setup()
    try:
        backlog = server.config.c2s.backlog
        reuse = server.config.server.workers != 1  # [server] workers share the ports (SO_REUSEPORT)
        if settings.port:
            sockets = listening.tcp("http", settings.host, settings.port, backlog, reuse_port=reuse)
            await listening.serve("http", sockets, sites(runner, None))
        if settings.tls_port and server.tls_context is not None:
            sockets = listening.tcp("https", settings.host, settings.tls_port, backlog, reuse_port=reuse)
            await listening.serve("https", sockets, sites(runner, server.tls_context))
        addresses = tuple((str(address[0]), int(address[1])) for address in runner.addresses)
        log.info("http listening on %s", ", ".join(f"{host}:{port}" for host, port in addresses))
        yield HttpEndpoint(addresses)
    finally:
        await runner.cleanup()
