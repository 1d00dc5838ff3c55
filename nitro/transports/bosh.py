"""The BOSH transport (XEP-0124, XEP-0206) on aiohttp: POST /http-bind feeds sans-IO sessions
(nitro/xmpp/bosh_session.py); each session is a `Transport` whose own task runs its `ClientStream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from aiohttp import hdrs, web
from lxml import etree

from nitro.c2s.driver import ClientStream
from nitro.c2s.transport import StreamHeader
from nitro.config import is_loopback
from nitro.xmpp.bosh import Body, BoshError, Condition, parse_body, payload, terminal
from nitro.xmpp.bosh_session import BoshSession, Reply, Settings
from nitro.xmpp.errors import StreamError

if TYPE_CHECKING:
    from nitro.server import Server

log = logging.getLogger(__name__)

PATH: Final = "/http-bind"
CONTENT_TYPE: Final = "text/xml; charset=utf-8"
# XEP-0124 §5 names these for requests (constrained clients may send the last two); nothing else is XML.
_REQUEST_TYPES: Final = frozenset(
    {"text/xml", "application/xml", "text/plain", "application/x-www-form-urlencoded"}
)
# §7.1 lets the client pick the responses' Content-Type; never one a browser would render as a page.
_RESPONSE_TYPES: Final = frozenset({"text/xml", "application/xml", "text/plain"})
# Stream errors with a binding condition of the same meaning; the others travel as remote-stream-error.
_BINDING_CONDITIONS: Final[dict[str, Condition]] = {
    "host-unknown": "host-unknown",
    "host-gone": "host-gone",
    "system-shutdown": "system-shutdown",
}
_MARGIN: Final = 30.0  # seconds a request may wait beyond 'wait' for a slow stream before an empty answer
SHUTDOWN_GRACE: Final = 5.0

ClientInfo = Callable[[web.Request], tuple[str, bool]]
"""(peer address, encrypted) of a request; the HTTP server passes one that knows its trusted proxies."""


def direct_client(request: web.Request) -> tuple[str, bool]:
    """Without proxies: the socket's peer; encrypted over TLS, or from a loopback peer."""
    peer = request.remote or "unknown"
    return peer, request.secure or is_loopback(peer)


def add_routes(app: web.Application, server: Server, *, client_info: ClientInfo = direct_client) -> None:
    """Serve BOSH at /http-bind of `app` (POST, and OPTIONS for CORS preflight); sessions end on shutdown."""
    service = BoshService(server, client_info)
    app[SERVICE] = service
    app.router.add_route("POST", PATH, service.post)
    app.router.add_route("OPTIONS", PATH, service.options)
    app.router.add_route("GET", PATH, service.get)
    app.on_shutdown.append(service.on_shutdown)


class _TooLarge(Exception):
    pass


class BoshService:
    """The BOSH sessions of one HTTP application, by sid."""

    def __init__(self, server: Server, client_info: ClientInfo) -> None:
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
        try:
            body = parse_body(data, max_stanza_bytes=self.server.config.c2s.max_stanza_bytes)
        except BoshError as error:
            log.info("bad BOSH request: %s", error)
            return _response(terminal(error.condition), headers)
        peer, encrypted = self.client_info(request)
        if body.sid is None:
            created = self._create(body, peer, encrypted)
            if isinstance(created, bytes):
                return _response(created, headers)
            connection = created
        else:
            found = self.sessions.get(body.sid)
            if found is None:  # XEP-0124 §17.2: unknown or expired sid
                return _response(terminal("item-not-found"), headers)
            if found.encrypted and not encrypted:  # §15: a secure session stays on encrypted connections
                return web.Response(status=403, headers=headers)
            connection = found
        reply = await connection.request(next(self.handles), body, first=body.sid is None)
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
        connection = BoshConnection(self, core, peer, encrypted, content_type)
        self.sessions[sid] = connection
        connection.start()
        return connection

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


class BoshConnection:
    """One BOSH session as the `Transport` of a client stream; its task feeds the stream request by request.

    HTTP handlers only queue their request and wait for its `Reply`; the task hands the request to the sans-IO
    session, delivers the stream events it releases, and answers held requests when the stream has output,
    when 'wait' passes, or with the terminal body. No request for 'inactivity' seconds ends the session as a
    lost connection would (a resumable XMPP session detaches, XEP-0198).
    """

    kind = "bosh"

    def __init__(
        self, service: BoshService, core: BoshSession, peer_host: str, encrypted: bool, content_type: str
    ) -> None:
        self.service = service
        self.core = core
        self.peer_host = peer_host
        self.encrypted = encrypted
        self.content_type = content_type
        self.task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._inbox: deque[tuple[int, Body, bool]] = deque()
        self._waiters: dict[int, asyncio.Future[Reply]] = {}
        self._wake = asyncio.Event()
        self._flush_handle: asyncio.Handle | None = None
        self._closed = False
        self._shutdown = False

    def start(self) -> None:
        self.task = self._loop.create_task(self._run(), name=f"bosh-{self.core.sid[:8]}")
        self.service.server.connection_task(self.task)

    # -- the stream's Transport ----------------------------------------------------------------------

    @property
    def can_starttls(self) -> bool:
        return False  # encryption belongs to HTTP (XEP-0206 §4)

    def open_stream(self, header: StreamHeader) -> None:
        self.core.stream_opened(header.id)

    def send(self, element: etree._Element) -> None:
        self.core.send(payload(element))
        self._schedule_flush()

    def send_keepalive(self) -> None:
        pass  # the client's own requests keep a BOSH session alive

    def restart(self) -> None:
        self.core.expect_restart()

    async def start_tls(self) -> None:
        raise StreamError("policy-violation", "no STARTTLS over BOSH (XEP-0206 §4)")

    def close_stream(self, error: StreamError | None) -> None:
        """Our last words as a terminal body: stream errors as `remote-stream-error` (XEP-0124 §17.2)."""
        if error is None:
            self.core.terminate(None)
        elif (condition := _BINDING_CONDITIONS.get(error.condition)) is not None:
            self.core.terminate(condition)
        else:
            self.core.terminate("remote-stream-error", payload(error.to_element()))
        self._schedule_flush()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    # -- requests ------------------------------------------------------------------------------------

    async def request(self, handle: int, body: Body, *, first: bool) -> Reply:
        """Queue one request for the session's task and wait for its answer (bounded)."""
        waiter: asyncio.Future[Reply] = self._loop.create_future()
        self._waiters[handle] = waiter
        self._inbox.append((handle, body, first))
        self._wake.set()
        try:
            async with asyncio.timeout(self.core.wait + _MARGIN):
                return await waiter
        except TimeoutError:
            log.warning("BOSH session %s left a request unanswered", self.core.sid)
            return Reply(handle, b"<body xmlns='http://jabber.org/protocol/httpbind'/>")
        finally:
            self._waiters.pop(handle, None)

    def shut_down(self) -> None:
        """The server stops: the task closes the stream with `system-shutdown`."""
        self._shutdown = True
        self._wake.set()

    async def _run(self) -> None:
        stream = ClientStream(self.service.server, self)
        try:
            await self._serve(stream)
        except Exception:
            log.exception("BOSH session %s failed", self.core.sid)
            self.core.terminate("internal-server-error")
        finally:
            self._flush()
            await stream.connection_lost()
            try:
                await self._linger()
            finally:
                self._finish()

    async def _serve(self, stream: ClientStream) -> None:
        core = self.core
        while stream.open and not self._closed and not core.terminated:
            if self._shutdown:
                await stream.close(StreamError("system-shutdown"))
                return
            if self._inbox:
                await self._process(stream, *self._inbox.popleft())
                continue
            now = time.monotonic()
            if core.inactive(now):  # XEP-0124 §10: ends without a word to the client
                log.info("BOSH session %s inactive for %d s", core.sid, core.settings.inactivity)
                return
            if stream.next_deadline() <= now:
                await stream.tick()
                continue
            if core.next_deadline() <= now:
                self._flush()
                continue
            await self._sleep_until(min(stream.next_deadline(), core.next_deadline()))

    async def _process(self, stream: ClientStream, handle: int, body: Body, first: bool) -> None:
        now = time.monotonic()
        stream.activity()
        core = self.core
        events = core.create(handle, body, now) if first else core.receive(handle, body, now)
        core.processing = True
        try:
            for event in events:
                if not await stream.receive(event):
                    break
        finally:
            core.processing = False
            self._flush()

    async def _linger(self) -> None:
        """A terminated session stays to give its terminal body to the next request, for a while."""
        core = self.core
        deadline = time.monotonic() + core.settings.inactivity
        while core.terminated and not core.terminal_delivered and not self.service.closing:
            while self._inbox:
                handle, body, _first = self._inbox.popleft()
                core.receive(handle, body, time.monotonic())
                self._flush()
            if core.terminal_delivered or time.monotonic() >= deadline:
                return
            await self._sleep_until(deadline)

    def _finish(self) -> None:
        """The session is gone: later requests with its sid get item-not-found."""
        self.service.sessions.pop(self.core.sid, None)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        if not self.core.terminated:
            self.core.terminate(None)
        for handle, body, _first in self._inbox:
            self.core.receive(handle, body, time.monotonic())
        self._inbox.clear()
        self._flush()

    async def _sleep_until(self, deadline: float) -> None:
        self._wake.clear()
        if self._inbox or self._closed or self._shutdown:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                await self._wake.wait()

    def _schedule_flush(self) -> None:
        """Everything the stream sends in one loop turn goes out in one response."""
        if not self.core.processing and self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        for reply in self.core.flush(time.monotonic()):
            waiter = self._waiters.get(reply.handle)
            if waiter is not None and not waiter.done():
                waiter.set_result(reply)
        if self.core.terminated:
            self._wake.set()


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
