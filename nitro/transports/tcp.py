"""The TCP transport (STARTTLS and Direct TLS): an asyncio Protocol that parses the XML stream into elements
for the c2s stream, serialises what the stream sends, one socket write per loop turn (its writing side is
nitro/transports/tcp_output.py), and runs the stream's timers on the loop's timer wheel. It applies the
shared limits (nitro/transports/limits.py): connections per address, traffic shaping by pausing reads, and
parsing before authentication on a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from lxml import etree

from nitro.c2s.driver import ClientStream
from nitro.c2s.transport import StreamHeader
from nitro.observe import trace
from nitro.transports.deadline import Deadline
from nitro.transports.limits import AddressSlot, SharedLimits, too_many_connections
from nitro.transports.tcp_output import Output
from nitro.transports.tcp_task import PARKED, TIMER, StreamInput, serve_client
from nitro.transports.tls_layer import start_server_tls
from nitro.xmpp.errors import StreamError
from nitro.xmpp.xmlstream import XMLStreamParser
from nitro.xmpp.xmlwrite import STREAM_FOOTER, serialize, stream_header

if TYPE_CHECKING:
    from nitro.core.context import Core

MAX_INPUT_BUFFER = 128 * 1024  # unread input past this pauses reading from the socket
LINGER = 2.0  # seconds a closed stream keeps reading, waiting for the peer to close its side


class ClientConnection(Output):
    """The `Transport` of a stream over one socket, with STARTTLS and a lingering close.

    Framing: one XML document per stream (RFC 6120 §4): the parser turns bytes into stream events, the
    serialiser writes elements inside the open `<stream:stream>` (its default namespace is not repeated).

    Input: chunks are kept until the connection task reads them; reading from the socket pauses while more
    than MAX_INPUT_BUFFER bytes wait, and while the peer is not reading what we write (backpressure).
    Output: batched, and cut off when the client stops reading (`Output`, nitro/transports/tcp_output.py).
    Timers: a `Deadline` on the loop's timer wheel (nitro/transports/deadline.py) for the stream's timer
    work; a handle for a blocked write, and for traffic shaping's pace while it waits.
    Tasks: one at a time runs `serve_client` (nitro/transports/tcp_task.py); an idle session's connection
    parks (no task), and `_wake` starts the next when input, the end, a close or the deadline comes.
    Limits: a connection past `[limits].max_connections_per_address` gets `<policy-violation/>` at once;
    what is read is shaped and parsed by `incoming` (nitro/transports/tcp_task.py).
    """

    __slots__ = (
        "_closed",
        "_eof",
        "_inbox",
        "_inbox_bytes",
        "_input_held",
        "_limits",
        "_loop",
        "_lost",
        "_parked",
        "_read_paused",
        "_server",
        "_slot",
        "_stream",
        "_timer",
        "_tls_started",
        "_waiter",
        "closing",
        "encrypted",
        "incoming",
        "kind",
        "peer_host",
        "refused",
        "transport",
    )

    def __init__(self, server: Core, limits: SharedLimits, direct_tls: bool = False) -> None:
        Output.__init__(self, server.config.c2s.write_timeout)
        self._server = server
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer_host = "local"
        self.encrypted = direct_tls  # a Direct TLS listener's (XEP-0368): TLS from the first byte
        self.kind = "tls" if direct_tls else "tcp"
        parser = XMLStreamParser(
            max_stanza_bytes=server.config.c2s.max_stanza_bytes,
            max_names=server.config.limits.max_names_before_auth,
        )
        self.incoming = StreamInput(parser, server.config.limits, None)
        self.refused: StreamError | None = None  # the connection is one too many from its address
        self._slot: AddressSlot | None = None
        self._stream: ClientStream | None = None
        self._input_held = False
        self._tls_started = False  # STARTTLS upgraded the socket; the stream's restart is next
        self.closing = False
        self._inbox: list[bytes] | None = None  # None while empty (idle memory)
        self._inbox_bytes = 0
        self._eof = False
        self._lost = False  # connection_lost was called
        self._closed: asyncio.Future[None] | None = None  # made when `finish` waits for connection_lost
        self._waiter: asyncio.Future[None] | None = None
        self._read_paused = False
        self._timer = Deadline(self._loop, self)
        self._parked = False  # no task: the next event starts one (`_wake`)

    # -- asyncio.Protocol -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        if self.encrypted:  # Direct TLS: its listener exists only with a context
            context, timeout = self._server.tls_context, self._server.config.c2s.negotiation_timeout
            assert context is not None
            self.transport = start_server_tls(self.transport, self, context, timeout)
        peer = transport.get_extra_info("peername")
        self.peer_host = str(peer[0]) if isinstance(peer, tuple) else "local"
        self._slot = self._limits.addresses.acquire(self.peer_host)
        if self._slot is None:
            self.refused = too_many_connections(self._server.config.limits.max_connections_per_address)
        else:
            self.incoming.lane = self._limits.preauth.lane()
        self._run(serve_client(self._server, self), None)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # lingering after our close: read and discard (see `close`)
        if self._inbox is None:
            self._inbox = [data]
        else:
            self._inbox.append(data)
        self._inbox_bytes += len(data)
        if self._inbox_bytes > MAX_INPUT_BUFFER:
            self._pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close the transport: a client that half-closes is gone (RFC 6120 §4.4)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.encrypted and isinstance(exc, ssl.SSLError | TimeoutError) and self._stream is not None:
            self._stream.note_end(f"connection lost: {exc!r}")  # Direct TLS: the handshake failed
        self._eof = True
        self._out = None
        self._cancel_timers()
        if self._slot is not None:
            self._slot.release()
        self._lost = True
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        self._wake()

    # -- the stream's Transport -----------------------------------------------------------------------------

    @property
    def parser(self) -> XMLStreamParser:
        return self.incoming.parser

    @property
    def parked(self) -> bool:
        """No task serves the connection now: its session is idle (nitro/transports/tcp_task.py)."""
        return self._parked

    @property
    def can_starttls(self) -> bool:
        return not self.encrypted and self._server.tls_context is not None

    def open_stream(self, header: StreamHeader) -> None:
        self.write(stream_header(from_=header.from_, to=header.to, id=header.id, lang=header.lang))

    def send(self, element: etree._Element) -> None:
        if self._stream is not None and trace.enabled():
            trace.written(self._stream.log.extra, element)
        self.write(serialize(element))

    def send_keepalive(self) -> None:
        self.write(b" ")  # RFC 6120 §4.6.1

    def restart(self) -> None:
        """What the client sent after the restarting element belongs to the old stream, also what still waits
        unread (a shaped read takes part of it): dropped. After STARTTLS that was done before the handshake
        (`start_tls`); what waits now came over TLS."""
        self.incoming.restart(self._stream is not None and self._stream.authenticated)
        if self._tls_started:
            self._tls_started = False
        else:
            self._drop_unread()

    def close_stream(self, error: StreamError | None) -> None:
        if error is not None:
            self.send(error.to_element())
        self.write(STREAM_FOOTER)
        self.close()

    def attach(self, stream: ClientStream) -> None:
        """The stream this connection carries (its session's log names what the connection logs)."""
        self._stream = stream

    async def sleep_until(self, when: float) -> bool:
        """Precisely (traffic shaping's pace), not on the coarse timer wheel of `read`."""
        while (left := when - time.monotonic()) > 0:
            if self.closing:
                return False
            handle = self._loop.call_later(left, self._wake)
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
                handle.cancel()
        return True

    def hold_input(self, held: bool) -> None:
        self._input_held = held
        if held:
            self._pause_reading()
        else:
            self._maybe_resume_reading()

    async def start_tls(self) -> None:
        """Send what is queued (the `<proceed/>`) in the clear, then upgrade the socket (RFC 6120 §5.4)."""
        context = self._server.tls_context
        assert context is not None
        assert self.transport is not None
        self.flush()
        await self._writable(self._write_timeout)
        self._drop_unread()  # RFC 6120 §5.4.3.3: clear text sent after <starttls/> is not the new stream
        self._tls_started = True
        tls = start_server_tls(self.transport, self, context, self._server.config.c2s.negotiation_timeout)
        self.transport = tls
        await tls.handshake()  # nitro/transports/tls_layer.py: TLS run here, not by the event loop
        self.encrypted = True

    def close(self) -> None:
        """Write nothing more; wake the connection task, which lingers (`finish`) and then closes.

        Closing the socket with unread input would reset the connection and the peer might never see our
        last words (the stream error); RFC 6120 §4.4 has the closing side wait for the peer's close.
        """
        if not self.closing:
            self.closing = True
            self._wake()

    def abandon(self) -> None:
        """The session moved to another process (upgrade): close now, no linger (XEP-0198 §5)."""
        self.closing = True
        if self.transport is not None:
            self.transport.close()
        self._wake()

    # -- the connection task's side ------------------------------------------------------------------------

    async def read(self, deadline: float, limit: int | None = None, park: bool = False) -> bytes | object:
        """The input received so far (at most `limit` bytes; the rest waits for the next read); b"" at the
        end of input or once closing; TIMER past `deadline`. With `park`, PARKED instead of waiting: the task
        ends, and the next input, end, close or deadline starts a new one (an idle connection has no task)."""
        self._timer.set(deadline)
        while not self._inbox:
            if self._eof or self.closing:
                return b""
            if self._timer.consume():
                return TIMER
            if park:
                self._parked = True
                return PARKED
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        inbox, self._inbox = self._inbox, None
        data = inbox[0] if len(inbox) == 1 else b"".join(inbox)
        self._inbox_bytes = 0
        if limit is not None and len(data) > limit:
            data, rest = data[:limit], data[limit:]
            self._inbox = [rest]
            self._inbox_bytes = len(rest)
        self._maybe_resume_reading()
        return data

    async def finish(self) -> None:
        """Flush, read and discard until the peer closes (at most LINGER seconds), then close."""
        self.closing = True
        self.incoming.close()
        self.flush()
        try:
            with contextlib.suppress(TimeoutError):
                await self._writable(1.0)
                self._inbox = None
                self._inbox_bytes = 0
                self._write_paused = False  # discarding input now: reading resumes whatever we wrote
                self._maybe_resume_reading()
                if not self._lost:  # (no timer to wait for what happened already)
                    async with asyncio.timeout(LINGER):
                        await asyncio.shield(self._until_lost())
        finally:
            self._cancel_timers()
            self._stream = None  # no cycle through the stream: the connection and its parser go at once
            if self.transport is not None:
                self.transport.close()
        if not self._lost:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._until_lost()), 1.0)

    def _until_lost(self) -> asyncio.Future[None]:
        """Done once the transport called connection_lost."""
        if self._closed is None:
            self._closed = self._loop.create_future()
            if self._lost:
                self._closed.set_result(None)
        return self._closed

    async def _writable(self, timeout: float) -> None:
        """Until the socket's send buffer has room (raises TimeoutError after `timeout`)."""
        if not self._write_paused or self._lost:
            return  # room now: no timer
        async with asyncio.timeout(timeout):
            while self._write_paused and not self._lost:
                self._waiter = self._loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None

    # -- internals ----------------------------------------------------------------------------------------

    def deadline_reached(self) -> None:
        """The stream's deadline (`_timer`) was reached."""
        self._wake()

    def _wake(self) -> None:
        if self._parked:
            self._parked = False
            assert self._stream is not None
            self._run(serve_client(self._server, self, self._stream), contextvars.Context())
        elif self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _run(self, serve: Coroutine[Any, Any, None], context: contextvars.Context | None) -> None:
        """Start the connection's task, tracked for shutdown: the first in a copy of the current context (the
        listener's), the next after it parked in an empty one, not in that of whoever woke it (another
        session's task, with its log scope and durability collection); it enters its session's log scope
        (`ClientStream.enter_scope`). The connection keeps no context while it is parked."""
        self._server.connection_task(self._loop.create_task(serve, context=context))

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self.transport.is_closing():
            self._read_paused = True
            self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (
            self._read_paused
            and not self._write_paused
            and not self._input_held
            and self._inbox_bytes <= MAX_INPUT_BUFFER
        ):
            self._read_paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    def _drop_unread(self) -> None:
        self._inbox = None
        self._inbox_bytes = 0
        self._maybe_resume_reading()

    def _cancel_timers(self) -> None:
        self._timer.cancel()
        self._cancel_write_timer()


def connection_factory(
    server: Core, limits: SharedLimits, direct_tls: bool = False
) -> Callable[[], ClientConnection]:
    """The protocol factory for `loop.create_server`: each connection runs `serve_client` in its own task."""
    return lambda: ClientConnection(server, limits, direct_tls)
