"""The `/metrics` endpoint: a small aiohttp server on a loopback port, behind a bearer token if one is set."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nitro.config import MetricsSection
from nitro.observe.metrics import Metrics
from nitro.transports.listeners import Listeners, sites

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MetricsEndpoint:
    """Where the endpoint listens (the real port when the config asked for port 0)."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"


def authorized(header: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>` (RFC 6750 §2.1), compared in constant time; no token set: open."""
    if not token:
        return True
    scheme, _, credentials = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


def make_app(metrics: Metrics, token: str) -> web.Application:
    async def scrape(request: web.Request) -> web.Response:
        if not authorized(request.headers.get("Authorization"), token):
            return web.Response(
                status=401,
                text="401: a bearer token is required\n",
                headers={"WWW-Authenticate": 'Bearer realm="nitro"'},
            )
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app


@asynccontextmanager
async def serve_metrics(
    metrics: Metrics, section: MetricsSection, listening: Listeners | None = None
) -> AsyncIterator[MetricsEndpoint | None]:
    """Run the probes and the endpoint for the duration of the scope; nothing at all when disabled."""
    if not section.enabled:
        yield None
        return
    metrics.start(section.lag_interval)
    runner = web.AppRunner(make_app(metrics, section.token), access_log=None, handle_signals=False)
    try:
        await runner.setup()
        listening = listening if listening is not None else Listeners()  # what an upgrade hands over
        await listening.serve(
            "metrics", listening.tcp("metrics", section.host, section.port, 128), sites(runner, None)
        )
        host, port = runner.addresses[0][:2]
        endpoint = MetricsEndpoint(str(host), int(port))
        log.info("metrics on %s%s", endpoint.url, " (bearer token required)" if section.token else "")
        yield endpoint
    finally:
        await runner.cleanup()
        await metrics.stop()
