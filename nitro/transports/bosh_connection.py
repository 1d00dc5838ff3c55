"""One BOSH session as the `Transport` of a client stream, with the task that runs its `ClientStream`.

HTTP handlers hand each request to the sans-IO session (nitro/xmpp/bosh_session.py) the moment it arrives,
so the rid window and the request limits see what the client really has open, and wait for their `Reply`.
The session's task delivers the stream events those requests released, in rid order, runs the stream's
timers, answers held requests when 'wait' passes, and ends the session after 'inactivity' seconds without
a request, as a lost TCP connection would end (a resumable XMPP session detaches, XEP-0198 §5). In an
upgrade it `hand_over`s its state and the successor `adopt`s it under the same sid (see bosh_move.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from lxml import etree

from nitro.c2s.driver import ClientStream
from nitro.c2s.transport import StreamHeader
from nitro.xmpp.bosh import HTTPBIND, Body, Condition, payload
from nitro.xmpp.bosh_session import BoshSession, Reply
from nitro.xmpp.bosh_state import export_state, movable
from nitro.xmpp.errors import StreamError
from nitro.xmpp.xmlstream import StreamEvent

if TYPE_CHECKING:
    from nitro.c2s.session import ClientSession
    from nitro.core.context import Core

log = logging.getLogger(__name__)

_MARGIN: Final = 30.0  # seconds a request may wait beyond 'wait' (a slow stream) before an empty answer
# Stream errors with a binding condition of the same meaning; the others travel as remote-stream-error.
_BINDING_CONDITIONS: Final[dict[str, Condition]] = {
    "host-unknown": "host-unknown",
    "host-gone": "host-gone",
    "system-shutdown": "system-shutdown",
}


class BoshConnection:
    """The `Transport` of one BOSH session (XEP-0206): stanzas go out in the bodies of held requests."""

    kind = "bosh"

    def __init__(
        self,
        server: Core,
        core: BoshSession,
        *,
        peer_host: str,
        encrypted: bool,
        content_type: str,
        on_finish: Callable[[BoshConnection], None],
    ) -> None:
        self.server = server
        self.core = core
        self.peer_host = peer_host
        self.encrypted = encrypted
        self.content_type = content_type
        self.task: asyncio.Task[None] | None = None
        self._on_finish = on_finish
        self._loop = asyncio.get_running_loop()
        self._stream: ClientStream | None = None
        self._events: deque[StreamEvent] = deque()  # released by requests, not yet delivered
        self._waiters: dict[int, asyncio.Future[Reply]] = {}
        self._wake = asyncio.Event()
        self._flush_handle: asyncio.Handle | None = None
        self._closed = False
        self._shutdown = False
        self.moved = False  # handed to an upgrade's successor: its sid is served there now

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

    # -- requests (called by the HTTP handlers) ------------------------------------------------------------

    def start(self, handle: int, creation: Body) -> asyncio.Future[Reply]:
        """The session creation request: the session's task starts with the events it released."""
        waiter = self._expect(handle)
        self._queue(self.core.create(handle, creation, time.monotonic()))
        self.task = self._loop.create_task(self._run(), name=f"bosh-{self.core.sid[:8]}")
        self.server.connection_task(self.task)
        return waiter

    def receive(self, handle: int, body: Body) -> asyncio.Future[Reply]:
        """A later request, in any order: the window, the limits and repeats are judged now."""
        waiter = self._expect(handle)
        if self._stream is not None:
            self._stream.activity()
        self._queue(self.core.receive(handle, body, time.monotonic()))
        self._flush()  # a repeat, a refusal or a terminal body is answered at once
        return waiter

    async def reply(self, handle: int, waiter: asyncio.Future[Reply]) -> Reply:
        """The answer to request `handle`, at most 'wait' (and a margin for a slow stream) later."""
        try:
            async with asyncio.timeout(self.core.wait + _MARGIN):
                return await waiter
        except TimeoutError:
            log.warning("BOSH session %s left a request unanswered", self.core.sid)
            return Reply(handle, f"<body xmlns='{HTTPBIND}'/>".encode())
        finally:
            self._waiters.pop(handle, None)

    def abort(self, condition: Condition) -> None:
        """A request for this session was refused with a terminal condition: the session ends with it."""
        self.core.terminate(condition)
        self._flush()

    # -- an upgrade (nitro/transports/bosh_move.py) ---------------------------------------------------------

    @property
    def movable(self) -> bool:
        """No request half way through (released but not yet handled, or waiting for a gap in the rids)."""
        return not self._events and self._stream is not None and movable(self.core)

    def hand_over(self) -> dict[str, Any]:
        """The session moves to a successor process: held requests are answered now (what is queued goes
        in the first, the rest empty, as on 'wait' expiry), then its state is exported and this process
        serves the sid no more (its task ends without ending the session). Call when `movable`."""
        now = time.monotonic()
        self._flush()
        self.core.release(now)
        self._flush()
        state = export_state(self.core)
        state.update(peer=self.peer_host, encrypted=self.encrypted, content_type=self.content_type)
        self.moved = True
        self._closed = True
        self._wake.set()
        return state

    def adopt(self, session: ClientSession) -> None:
        """In the successor: serve the restored `session` (bound already) under the restored sid. Attached in
        a context of its own, which its task inherits (the caller's log context stays the caller's)."""
        contextvars.copy_context().run(self._attach, session)

    def _attach(self, session: ClientSession) -> None:
        self._stream = ClientStream.bound(self.server, self, session)
        session.attach(self, stream_id=self.core.authid, lang=session.lang, mechanism=session.mechanism)
        self.task = self._loop.create_task(self._run(), name=f"bosh-{self.core.sid[:8]}")
        self.server.connection_task(self.task)

    def shut_down(self) -> None:
        """The server stops: the task closes the stream with `system-shutdown`."""
        self._shutdown = True
        self._wake.set()

    def _expect(self, handle: int) -> asyncio.Future[Reply]:
        waiter: asyncio.Future[Reply] = self._loop.create_future()
        self._waiters[handle] = waiter
        return waiter

    def _queue(self, events: list[StreamEvent]) -> None:
        if events:
            self._events.extend(events)
            self.core.processing = True  # answers wait until the stream has handled these
        self._wake.set()

    # -- the session's task --------------------------------------------------------------------------

    async def _run(self) -> None:
        stream = self._stream if self._stream is not None else ClientStream(self.server, self)
        self._stream = stream  # tracked in this task
        try:
            await self._serve(stream)
        except Exception:
            log.exception("BOSH session %s failed", self.core.sid)
            self.core.terminate("internal-server-error")
        finally:
            self._flush()
            if self.moved:
                stream.note_end("the session moved to the successor process (upgrade), same sid")
            try:
                await stream.connection_lost()
                await self._linger()
            finally:
                self._finish()

    async def _serve(self, stream: ClientStream) -> None:
        core = self.core
        while stream.open and not self._closed and not core.terminated:
            if self._shutdown:
                await stream.close(StreamError("system-shutdown"))
                return
            if self._events:
                await self._deliver(stream)
                continue
            now = time.monotonic()
            if core.inactive(now):  # XEP-0124 §10: it ends without a word to the client
                log.info("BOSH session %s: no request for %d s", core.sid, core.settings.inactivity)
                return
            if stream.next_deadline() <= now:
                await stream.tick()
            elif core.next_deadline() <= now:
                self._flush()
            else:
                await self._sleep_until(min(stream.next_deadline(), core.next_deadline()))

    async def _deliver(self, stream: ClientStream) -> None:
        """Hand the released events to the stream in order; then answer what can be answered."""
        try:
            while self._events:
                if not await stream.receive(self._events.popleft()):
                    self._events.clear()
        finally:
            self.core.processing = False
            self._flush()

    async def _linger(self) -> None:
        """A terminated session stays to give its terminal body to the next request, for a while."""
        core = self.core
        if self._shutdown or self.moved or core.condition == "system-shutdown":
            return  # the server is stopping: it waits for this task
        deadline = time.monotonic() + core.settings.inactivity
        while core.terminated and not core.terminal_delivered:
            if time.monotonic() >= deadline:
                return
            await self._sleep_until(deadline)

    def _finish(self) -> None:
        """The session is gone: held requests get its end, later ones item-not-found (from the service)."""
        self._on_finish(self)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self.core.processing = False
        if self.moved:
            return  # the session lives on in the successor: nothing ends here
        self.core.terminate(None)  # no-op if it already ended with a condition
        self._flush()

    async def _sleep_until(self, deadline: float) -> None:
        self._wake.clear()
        if self._events or self._closed or self._shutdown:
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
