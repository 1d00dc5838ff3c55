"""The BOSH transport (XEP-0124, XEP-0206) on aiohttp: POST /http-bind feeds sans-IO sessions
(nitro/xmpp/bosh_session.py); each session is a `BoshConnection` (nitro/transports/bosh_connection.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from aiohttp import hdrs, web

from nitro.config import is_loopback
from nitro.transports.bosh_connection import BoshConnection
from nitro.transports.bosh_move import BOSH_ARRIVAL, BOSH_WANTED, BoshArrival, BoshWanted
from nitro.xmpp.bosh import Body, BoshError, parse_body, terminal
from nitro.xmpp.bosh_session import BoshSession, Settings
from nitro.xmpp.bosh_state import restore_state

if TYPE_CHECKING:
    from nitro.core.context import Core

log = logging.getLogger(__name__)

PATH: Final = "/http-bind"
CONTENT_TYPE: Final = "text/xml; charset=utf-8"
# XEP-0124 §5 names these for requests (constrained clients may send the last two); nothing else is XML.
_REQUEST_TYPES: Final = frozenset(
    {"text/xml", "application/xml", "text/plain", "application/x-www-form-urlencoded"}
)
# §7.1 lets the client pick the responses' Content-Type; never one a browser would render as a page.
_RESPONSE_TYPES: Final = frozenset({"text/xml", "application/xml", "text/plain"})
SHUTDOWN_GRACE: Final = 5.0
ARRIVAL_WAIT: Final = 3.0  # seconds a request for a sid still moving here in an upgrade waits for it
MAX_AWAITED: Final = 1024  # sids awaited at once; beyond, an unknown sid is item-not-found at once

ClientInfo = Callable[[web.Request], tuple[str, bool]]
"""(peer address, encrypted) of a request; the HTTP server passes one that knows its trusted proxies."""


def direct_client(request: web.Request) -> tuple[str, bool]:
    """Without proxies: the socket's peer; encrypted over TLS, or from a loopback peer."""
    peer = request.remote or "unknown"
    return peer, request.secure or is_loopback(peer)


def add_routes(app: web.Application, server: Core, *, client_info: ClientInfo = direct_client) -> None:
    """Serve BOSH at /http-bind of `app` (POST, and OPTIONS for CORS preflight); sessions end on shutdown.

    `client_info` tells a request's client address and whether it counts as encrypted (the HTTP server's
    rules: TLS, a loopback peer, or a trusted proxy's X-Forwarded-Proto: https); the default knows no proxies.
    """
    service = BoshService(server, client_info)
    app[SERVICE] = service
    app.router.add_route("POST", PATH, service.post)
    app.router.add_route("OPTIONS", PATH, service.options)
    app.router.add_route("GET", PATH, service.get)
    app.on_shutdown.append(service.on_shutdown)
    undo = server.bus.add(BOSH_ARRIVAL, service.arrival)

    async def forget_arrivals(_app: web.Application) -> None:
        undo()

    app.on_cleanup.append(forget_arrivals)


class _TooLarge(Exception):
    pass


class BoshService:
    """The BOSH sessions of one HTTP application, by sid."""

    def __init__(self, server: Core, client_info: ClientInfo) -> None:
        self.server = server
        self.config = server.config.bosh
        self.settings = Settings(
            max_wait=self.config.max_wait,
            max_hold=self.config.max_hold,
            inactivity=self.config.max_inactivity,
            polling=self.config.polling,
            max_pause=self.config.max_pause,
        )
        self.client_info = client_info
        self.sessions: dict[str, BoshConnection] = {}
        self.handles = itertools.count(1)
        self.closing = False
        self._awaited: dict[str, asyncio.Future[BoshConnection | None]] = {}  # sids an upgrade may bring

    async def post(self, request: web.Request) -> web.Response:
        headers = self.cors(request)
        if not _acceptable(request):
            log.info("BOSH request with Content-Type %r refused", request.headers.get(hdrs.CONTENT_TYPE))
            return _response(terminal("bad-request"), headers, status=415)
        try:
            data = await self._read(request)
        except _TooLarge:
            return web.Response(status=413, headers=headers)
        except TimeoutError:
            return web.Response(status=408, headers=headers)
        peer, encrypted = self.client_info(request)
        try:
            body = parse_body(data, max_stanza_bytes=self.server.config.c2s.max_stanza_bytes)
        except BoshError as error:
            log.info("bad BOSH request from %s: %s", peer, error)
            named = self.sessions.get(error.sid) if error.sid is not None else None
            if named is not None and (encrypted or not named.encrypted):
                named.abort(error.condition)  # XEP-0124 §17.2: a terminal condition ends the session
            return _response(terminal(error.condition), headers)
        handle = next(self.handles)
        if body.sid is None:
            created = self._create(body, peer, encrypted)
            if isinstance(created, bytes):
                return _response(created, headers)
            connection = created
            waiter = connection.start(handle, body)
        else:
            found = self.sessions.get(body.sid) or await self._awaited_sid(body.sid)
            if found is None:  # XEP-0124 §17.2: unknown or expired sid
                return _response(terminal("item-not-found"), headers)
            if found.moved:  # an upgrade moved it: the client sends this request again (§14.3), elsewhere
                return web.Response(status=503, headers={**headers, hdrs.CONNECTION: "close"})
            if found.encrypted and not encrypted:  # §15.1: a secure session stays on encrypted connections
                return web.Response(status=403, headers=headers)
            connection = found
            waiter = connection.receive(handle, body)
        reply = await connection.reply(handle, waiter)
        return _response(reply.body, headers, status=reply.status, content_type=connection.content_type)

    async def options(self, request: web.Request) -> web.Response:
        """CORS preflight: which origins, methods and headers browsers may use, for how long."""
        return web.Response(status=200, headers=self.cors(request))

    async def get(self, request: web.Request) -> web.Response:
        return web.Response(
            text="This is a BOSH endpoint (XEP-0124, XEP-0206): POST <body/> elements here.\n",
            headers=self.cors(request),
        )

    def cors(self, request: web.Request) -> dict[str, str]:
        origins = self.config.cors_origins
        origin = request.headers.get(hdrs.ORIGIN)
        if "*" in origins:
            allowed = "*"
        elif origin is not None and origin in origins:
            allowed = origin
        else:
            return {}
        headers: dict[str, str] = {
            hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: allowed,
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: "GET, POST, OPTIONS",
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: "Content-Type",
            hdrs.ACCESS_CONTROL_MAX_AGE: "7200",
        }
        if allowed != "*":
            headers[hdrs.VARY] = "Origin"
        return headers

    async def _read(self, request: web.Request) -> bytes:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _TooLarge
        data = bytearray()
        async with asyncio.timeout(self.config.read_timeout):
            async for chunk in request.content.iter_chunked(65536):
                data += chunk
                if len(data) > limit:
                    raise _TooLarge
        return bytes(data)

    def _create(self, creation: Body, peer: str, encrypted: bool) -> BoshConnection | bytes:
        """A new session (XEP-0124 §7.1), or the terminal body that refuses it."""
        if self.closing:
            return terminal("system-shutdown")
        sid = secrets.token_urlsafe(18)  # §19.3: unpredictable
        try:
            core = BoshSession(
                sid, creation, self.settings, self.server.config.server.domain, time.monotonic()
            )
        except BoshError as error:
            log.info("BOSH session from %s refused: %s", peer, error)
            return terminal(error.condition)
        mime = (creation.get("content") or "").partition(";")[0].strip().lower()
        content_type = f"{mime}; charset=utf-8" if mime in _RESPONSE_TYPES else CONTENT_TYPE
        connection = BoshConnection(
            self.server,
            core,
            peer_host=peer,
            encrypted=encrypted,
            content_type=content_type,
            on_finish=self._forget,
        )
        self.sessions[sid] = connection
        return connection

    async def _awaited_sid(self, sid: str) -> BoshConnection | None:
        """A sid not here: during an upgrade's drain its session may still be on its way from the old
        process (its client raced ahead); ask for it there and wait briefly. None otherwise."""
        future = self._awaited.get(sid)
        if future is None:
            if len(self._awaited) >= MAX_AWAITED or not await self.server.bus.fire(
                BOSH_WANTED, BoshWanted(sid)
            ):
                return None
            future = self._awaited[sid] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(ARRIVAL_WAIT):
                return await asyncio.shield(future)
        except TimeoutError:
            return None
        finally:
            if self._awaited.get(sid) is future:
                del self._awaited[sid]

    async def arrival(self, event: BoshArrival) -> bool:
        """A session restored from another process with its BOSH state: served here under its sid."""
        state = event.state
        core = restore_state(state, self.settings, self.server.config.server.domain, time.monotonic())
        connection = BoshConnection(
            self.server,
            core,
            peer_host=str(state["peer"]),
            encrypted=bool(state["encrypted"]),
            content_type=str(state["content_type"]),
            on_finish=self._forget,
        )
        self.sessions[core.sid] = connection  # replaces a moved copy (taken back after a failed upgrade)
        connection.adopt(event.session)
        event.taken = True
        future = self._awaited.pop(core.sid, None)
        if future is not None and not future.done():
            future.set_result(connection)
        return True

    def _forget(self, connection: BoshConnection) -> None:
        if connection.moved:
            return  # its sid stays known here: requests for it are told to go elsewhere (503)
        if self.sessions.get(connection.core.sid) is connection:
            del self.sessions[connection.core.sid]

    async def on_shutdown(self, _app: web.Application) -> None:
        """Every session ends with `system-shutdown` (§17.2) before the HTTP server waits for its requests."""
        self.closing = True
        connections = list(self.sessions.values())
        for connection in connections:
            connection.shut_down()
        tasks = [connection.task for connection in connections if connection.task is not None]
        if tasks:
            _done, late = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
            for task in late:
                task.cancel()


SERVICE: Final = web.AppKey("nitro.bosh", BoshService)


def _acceptable(request: web.Request) -> bool:
    """XEP-0124 §5: the request types it names, or none at all; UTF-8 only (§7.2 conversion is optional)."""
    if hdrs.CONTENT_TYPE not in request.headers:
        return True
    charset = request.charset
    return request.content_type in _REQUEST_TYPES and (
        charset is None or charset.lower() in ("utf-8", "utf8")
    )


def _response(
    data: bytes, headers: dict[str, str], *, status: int = 200, content_type: str = CONTENT_TYPE
) -> web.Response:
    return web.Response(body=data, status=status, headers={**headers, hdrs.CONTENT_TYPE: content_type})
