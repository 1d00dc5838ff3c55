"""What every transport drives: the client stream of one connection, with its catch-log-close boundary.

A transport creates one `ClientStream` per connection (TCP socket, WebSocket, BOSH session), feeds it
events, ticks its timer and tells it when the connection is gone. The stream follows the session it drives:
after `<resume/>` (XEP-0198 §5) that is the older session; when another connection resumes ours, `open`
turns False and the transport stops.

For operators it logs, at INFO, one line when the connection opens (address, transport), when a resource is
bound, and when the connection is gone (duration, reason); at DEBUG (logger `nitro.trace`) every element
read (nitro/observe/trace.py; transports trace what they write).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import TYPE_CHECKING

from nitro.c2s.negotiation import Negotiation
from nitro.c2s.session import ClientSession
from nitro.c2s.transport import Transport
from nitro.observe import trace
from nitro.observe.logs import enter_session
from nitro.xmpp.errors import StreamError
from nitro.xmpp.xmlstream import StreamClosed, StreamEvent

if TYPE_CHECKING:
    from nitro.core.context import Core

log = logging.getLogger(__name__)


class ClientStream:
    """One connection's stream; every method is an error boundary (a StreamError closes the stream with it,
    an unexpected exception closes it with `<internal-server-error/>`), so a transport needs no try/except.

    Until a resource is bound the input goes to the `Negotiation`; then to the bound `ClientSession`.
    """

    __slots__ = ("_admitted", "_end_reason", "_negotiation", "_opened_at", "_server", "_session", "transport")

    def __init__(self, server: Core, transport: Transport) -> None:
        self.transport = transport
        self._server = server
        self._negotiation: Negotiation | None = Negotiation(server, transport)
        self._session: ClientSession | None = None
        self._admitted = False  # holds one of the server's negotiation slots
        self._opened_at = time.monotonic()
        self._end_reason: str | None = None  # why the connection ends, once known
        server.track(self._negotiation)
        self._negotiation.yield_slot = self._release  # waiting for its account's login turn
        self._negotiation.log.info("connected from %s over %s", transport.peer_host, transport.kind)

    @classmethod
    def bound(cls, server: Core, transport: Transport, session: ClientSession) -> ClientStream:
        """The stream of a session bound already, which came from another process with its transport's
        state (a BOSH session in an upgrade): input goes straight to `session` (the caller attaches it)."""
        stream = cls.__new__(cls)
        stream.transport = transport
        stream._server = server
        stream._negotiation = None
        stream._session = session
        stream._admitted = False
        stream._opened_at = time.monotonic()
        stream._end_reason = None
        return stream

    @property
    def negotiation(self) -> Negotiation:
        """The stream's negotiation, until a session is bound (then it is let go: idle memory)."""
        assert self._negotiation is not None, "the stream is bound"
        return self._negotiation

    @property
    def session(self) -> ClientSession | None:
        """The session this connection drives, once bound or resumed."""
        if self._session is None:
            negotiation = self._negotiation
            if negotiation is not None and negotiation.bound is not None:
                self._session = negotiation.bound
                self._negotiation = None  # done with; its state lives on in the session
        return self._session

    @property
    def authenticated(self) -> bool:
        """The client authenticated (SASL success): its stream is no longer anonymous."""
        return self.session is not None or self.negotiation.authenticated

    @property
    def _current(self) -> Negotiation | ClientSession:
        session = self.session
        return self.negotiation if session is None else session

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        return self._current.log

    @property
    def open(self) -> bool:
        """Still ours and not closed: input should keep flowing to it."""
        current = self._current
        return current.transport is self.transport and not current.closed

    @property
    def established(self) -> bool:
        session = self.session
        return session is not None and session.established

    @property
    def last_read(self) -> float:
        session = self.session
        return session.last_read if session is not None else 0.0

    def activity(self) -> None:
        session = self.session
        if session is not None:
            session.activity()

    def next_deadline(self) -> float:
        return self._current.next_deadline()

    def enter_scope(self) -> None:
        """From now on the current task logs for this stream's session, as the task that negotiated it did
        (a transport's later task: a TCP connection's after it parked)."""
        session = self.session
        enter_session(session if session is not None else self.negotiation.log)

    def note_end(self, reason: str) -> None:
        """Why the connection ends, as the transport knows it (e.g. a client that stopped reading)."""
        if self._end_reason is None:
            self._end_reason = reason

    async def receive(self, event: StreamEvent) -> bool:
        """Handle one input event; False once the stream is over (closed, or resumed elsewhere)."""
        current = self._current
        negotiating = self._negotiation if self._session is None else None  # the id a bind gives its session
        if trace.enabled():
            trace.read(current.log.extra, event)
        if isinstance(event, StreamClosed):
            self.note_end("the client closed the stream")
        try:
            if not self._admitted and not self.authenticated:
                await self._admit()
            await current.receive(event)
            if self._admitted and self.authenticated:
                self._release()  # authenticated: the expensive part (TLS, SASL) is over
        except StreamError as error:
            await self.close(error)
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            self.log.info("connection lost: %r", exc)
            self.note_end(f"connection lost: {exc!r}")
            await self.connection_lost()
        except Exception:
            self.log.exception("internal error; closing the stream")
            await self.close(StreamError("internal-server-error"))
        if negotiating is not None and (bound := self.session) is not None and bound.id == negotiating.id:
            bound.log.info("bound %s", bound.jid)  # a resumed session has its own id, and says so
        return self.open

    async def _admit(self) -> None:
        """Wait for a negotiation slot (`[c2s] max_negotiating`): a login storm is admitted a bounded number
        of streams at a time until they are authenticated, so the sessions already up keep the event loop
        (the waiting ones do not read).
        """
        negotiation = self.negotiation
        slots = self._server.negotiations
        if not slots.locked():  # a slot is free: acquired without waiting, so without a timer (~5 µs)
            await slots.acquire()
            self._admitted = True
            return
        remaining = negotiation.negotiation_deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                await slots.acquire()
        except TimeoutError:
            raise StreamError("connection-timeout", "stream negotiation took too long") from None
        self._admitted = True

    def _release(self) -> None:
        if self._admitted:
            self._admitted = False
            self._server.negotiations.release()

    async def tick(self) -> bool:
        """Run the stream's timer work (timeouts, pings, keepalives); False once the stream is over."""
        try:
            await self._current.on_timer()
        except StreamError as error:
            await self.close(error)
        except Exception:
            self.log.exception("internal error in a timer; closing the stream")
            await self.close(StreamError("internal-server-error"))
        return self.open

    async def close(self, error: StreamError | None = None) -> None:
        """Close the stream (the transport's own framing errors come here too), if it is still ours."""
        current = self._current
        self._release()
        if error is not None:
            self.note_end(error.described)
        if current.transport is self.transport:
            try:
                await current.close(error)
            except Exception:
                current.log.exception("internal error while closing")

    async def connection_lost(self) -> None:
        """The connection is gone: a resumable session detaches and stays tracked, any other ends."""
        current = self._current
        server = self._server
        self._release()
        moved = current.transport is not self.transport and not current.closed
        closed_by_server = current.closed  # before connection_lost() marks it closed
        try:
            if current.transport is self.transport:
                await current.connection_lost()
        finally:
            if self._negotiation is not None:
                server.untrack(self._negotiation)
            if current.closed:
                server.untrack(current)
            if self._opened_at:
                self._opened_at, opened_at = 0.0, self._opened_at
                reason = self._end_reason or _closed_by_server(current, moved, closed_by_server)
                self.log.info("disconnected after %.1f s: %s", time.monotonic() - opened_at, reason)


def _closed_by_server(current: Negotiation | ClientSession, moved: bool, closed: bool) -> str:
    if moved:
        return "the session was resumed on another connection"
    if current.closed_with is not None:
        return current.closed_with
    if closed:
        return "the server closed the stream"
    return "the client closed the connection"
