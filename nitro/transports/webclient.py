"""The Converse.js web client at / (Prosody's mod_conversejs is the model): a page configured for this server
and the client's files, which `make web-client` installs into [http] web_client_dir (never committed)."""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from nitro.transports.forwarded import Network, connection_urls, trusted_networks

if TYPE_CHECKING:
    from nitro.core.context import Core

log = logging.getLogger(__name__)

ASSETS: Final = "/converse"  # where web_client_dir/dist is served
TEMPLATE: Final = Path(__file__).parent.parent / "web" / "index.html"
TRANSPORTS: Final = ("websocket", "bosh")
NOT_INSTALLED: Final = "503: the web client is not installed; run `make web-client`, then restart Nitro\n"


class WebClient:
    """GET / (and /?transport=websocket or bosh to use only that one) and the files under ASSETS."""

    def __init__(self, app: web.Application, server: Core) -> None:
        self._app = app
        self._domain = server.domain
        self._registration = (
            server.config.registration.open and "register" not in server.config.modules.disabled
        )
        self._networks: tuple[Network, ...] = trusted_networks(server.config.http.trusted_proxies)
        self._dist = server.config.path(server.config.http.web_client_dir) / "dist"
        self._template = Template(TEMPLATE.read_text(encoding="utf-8"))

    def add_routes(self) -> None:
        self._app.router.add_get("/", self.index)
        if self._dist.is_dir():
            self._app.router.add_static(ASSETS, self._dist)
        else:
            log.warning("web client not installed at %s: `make web-client` installs it", self._dist.parent)

    def options(self, request: web.Request, transport: str | None) -> dict[str, Any]:
        """Converse.js settings: this server's domain, login, full screen, and the connection URLs as the
        browser reached us; WebSocket first, BOSH as its fallback when the server offers it."""
        options: dict[str, Any] = {
            "assets_path": f"{ASSETS}/",
            "authentication": "login",
            "view_mode": "fullscreen",
            "locked_domain": self._domain,
            "discover_connection_methods": False,
            "allow_registration": self._registration,
        }
        if self._registration:
            options["registration_domain"] = self._domain
        for kind, url in connection_urls(request, self._networks).items():
            if transport in (None, kind):
                options["websocket_url" if kind == "websocket" else "bosh_service_url"] = url
        return options

    async def index(self, request: web.Request) -> web.Response:
        transport = request.query.get("transport")
        if transport is not None and transport not in TRANSPORTS:
            return web.Response(status=400, text=f"400: transport is one of {', '.join(TRANSPORTS)}\n")
        if not (self._dist / "converse.min.js").is_file():
            return web.Response(status=503, text=NOT_INSTALLED)
        options = json.dumps(self.options(request, transport)).replace("<", "\\u003c")  # no </script> inside
        page = self._template.substitute(
            title=html.escape(f"Nitro · {self._domain}"), assets=ASSETS, options=options
        )
        headers = {
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        return web.Response(text=page, content_type="text/html", headers=headers)


def add_routes(app: web.Application, server: Core) -> None:
    if server.config.http.web_client:
        WebClient(app, server).add_routes()
