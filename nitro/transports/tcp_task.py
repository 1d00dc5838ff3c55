"""The task of one TCP connection: it reads what arrived, parses it (on a pre-authentication thread until the
client logs in, nitro/transports/isolation.py), shapes it (nitro/transports/limits.py) and hands the events to
the client stream, and runs the stream's timers. The socket side is nitro/transports/tcp.py.
"""

from __future__ import annotations

import ssl
import time
from typing import TYPE_CHECKING, Final, Protocol

from nitro.c2s.driver import ClientStream
from nitro.c2s.transport import Transport
from nitro.config import LimitsSection
from nitro.observe.heap import trim_soon
from nitro.transports.isolation import Lane
from nitro.transports.limits import Shaper, new_shaper
from nitro.xmpp.errors import StreamError
from nitro.xmpp.xmlstream import XMLStreamParser

if TYPE_CHECKING:
    from nitro.core.context import Core

TIMER: Final = object()  # what `Socket.read` returns when the stream's deadline has passed
PARKED: Final = object()  # what `Socket.read` returns instead of waiting when asked to park
# Seconds without input after which an established session's connection parks (sooner once its parser was
# let go): what stays unparked in a login storm is about the logins of the last second.
PARK_AFTER: Final = 1.0


class Socket(Transport, Protocol):
    """What the task needs of its connection, besides the stream's `Transport`."""

    closing: bool
    refused: StreamError | None  # the connection is one too many from its address
    incoming: StreamInput

    def attach(self, stream: ClientStream) -> None: ...

    async def read(self, deadline: float, limit: int | None = None, park: bool = False) -> bytes | object:
        """The input received so far, at most `limit` bytes; b"" at its end or once closing; TIMER past
        `deadline`; with `park`, PARKED rather than waiting (the connection then calls `serve_client` again,
        with the stream, when something happens)."""

    async def sleep_until(self, when: float) -> bool:
        """Wait until `when` (time.monotonic()); False if the connection started closing first."""

    def hold_input(self, held: bool) -> None:
        """Stop (or resume) reading from the socket, whatever else would resume it."""

    async def finish(self) -> None: ...


class StreamInput:
    """The input side of a connection: the parser (counting names, on its lane until the client is
    authenticated), the shaper, and whether the stream restarted during the last `feed`."""

    __slots__ = ("_shaper", "lane", "limits", "parser", "restarted")

    def __init__(self, parser: XMLStreamParser, limits: LimitsSection, lane: Lane | None) -> None:
        self.parser = parser
        self.limits = limits
        # made when first needed, dropped while the connection is parked at full credit (idle memory)
        self._shaper: Shaper | None = None
        self.lane = lane
        self.restarted = False

    @property
    def shaper(self) -> Shaper:
        shaper = self._shaper
        if shaper is None:
            shaper = self._shaper = new_shaper(self.limits)
        return shaper

    @property
    def resting(self) -> bool:
        """No shaper held now (none made yet, or dropped at full credit)."""
        return self._shaper is None

    def rest(self) -> None:
        """The connection parks: a shaper at full credit goes (one made on the next input is the same)."""
        shaper = self._shaper
        if shaper is not None and shaper.rested():
            self._shaper = None

    def restart(self, authenticated: bool) -> None:
        """A new stream on the connection: what was read after the restarting element belonged to the old one
        (after STARTTLS, to the clear text) and is dropped. Authenticated, a client's names are no longer
        counted and its stream is parsed on the event loop's thread."""
        lane = self.lane
        if lane is not None and not lane.stopped:
            # the old stream's parser is freed where it parsed (see `close`), with the lane's next call
            self.parser.let_go(lane.later)
        if authenticated:
            self.parser.max_names = None
            self.leave_lane()
        self.parser.reset()
        self.restarted = True

    def close(self) -> None:
        """The connection is over: its parser's memory goes now, not when a cycle is collected. (On its lane:
        ending a parse re-initialises lxml's parser context with the current thread's name dictionary.)"""
        lane = self.lane
        if lane is None:
            self.parser.dispose()
        elif not lane.stopped:  # else (only at shutdown) the garbage collector frees it
            lane.run(self.parser.dispose)
        self.leave_lane()

    def leave_lane(self) -> None:
        lane, self.lane = self.lane, None
        if lane is not None:
            lane.release()

    async def feed(self, socket: Socket, stream: ClientStream, data: bytes) -> None:
        """Parse `data` and hand each event to the stream, stopping at a restart or the stream's end; while
        the shaper is in debt, wait before the next event."""
        self.restarted = False
        stream.activity()
        self.shaper.take_bytes(len(data))
        try:
            lane = self.lane
            events = self.parser.feed(data) if lane is None else lane.run(self.parser.feed, data)
        except StreamError as error:  # not-well-formed, restricted XML, too big (RFC 6120 §4.9.3)
            await stream.close(error)
            return
        for event in events:
            if not await self.pace(socket, stream):
                return
            self.shaper.take(event)
            if not await stream.receive(event) or self.restarted or socket.closing:
                return

    async def pace(self, socket: Socket, stream: ClientStream) -> bool:
        """Traffic shaping: read nothing from the client until the shaper's debt is paid (TCP then slows the
        client down; nothing is dropped), the stream's timers still running. False once the stream is over."""
        delay = self.shaper.delay()
        if delay <= 0:
            return True
        socket.hold_input(True)
        try:
            while delay > 0 and not socket.closing:
                due = stream.next_deadline()
                woke = await socket.sleep_until(min(time.monotonic() + delay, due))
                if woke and time.monotonic() >= due and not await stream.tick():
                    return False
                delay = self.shaper.delay()
        finally:
            socket.hold_input(False)
        return stream.open and not socket.closing

    def next_deadline(self, stream: ClientStream, release_after: float) -> float:
        """The stream's deadline, or earlier the moment an idle parser may be freed or the connection park."""
        deadline = stream.next_deadline()
        if self.parser.release_due and stream.established:
            deadline = min(deadline, stream.last_read + release_after)
            if not self.idle(stream):
                deadline = min(deadline, stream.last_read + PARK_AFTER)
        return deadline

    def idle(self, stream: ClientStream) -> bool:
        """An established session without input for PARK_AFTER seconds, or whose parser was let go (or found
        mid-stanza) since the last input: its connection parks rather than wait."""
        return stream.established and (
            not self.parser.release_due or time.monotonic() >= stream.last_read + PARK_AFTER
        )

    def release_idle_parser(self, stream: ClientStream, release_after: float) -> None:
        """Free the parser of an idle session (kept if input stopped mid-stanza)."""
        if (
            self.parser.release_due
            and stream.established
            and time.monotonic() >= stream.last_read + release_after
            and self.parser.release()
        ):
            trim_soon()  # the parser's pages go back to the system, not only to the C heap


async def serve_client(server: Core, connection: Socket, stream: ClientStream | None = None) -> None:
    """Run one connection: read, parse, hand events to the stream, run its timer; at the end, tell the stream
    and close. An idle session's connection parks instead of waiting: the task ends, the connection keeps its
    state and calls this again with its `stream` on the next input, end, close or deadline (an idle
    connection holds no task). An idle session is one without input for PARK_AFTER seconds
    (`StreamInput.idle`); until then, and before the stream is established, the task waits for input.
    """
    if stream is None:
        stream = ClientStream(server, connection)
        connection.attach(stream)
        refused = connection.refused
    else:  # a parked connection woken: a new task, in a context of its own
        stream.enter_scope()
        refused = None  # told at the start
    release_after = server.config.c2s.release_parser_after
    received = connection.incoming
    parked = False
    try:
        if refused is not None:
            await stream.close(refused)  # RFC 6120 §4.9.1.2: our header, the error, the close
        while stream.open and not connection.closing:
            if not await received.pace(connection, stream):
                break  # shaped: no more than the byte rate allows is read, then the next waits its turn
            deadline = received.next_deadline(stream, release_after)
            park = received.idle(stream)
            data = await connection.read(deadline, received.shaper.allowance(), park=park)
            if data is PARKED:
                parked = True  # nothing awaited from here to the end of the task: no second task yet
                received.rest()
                return
            if data is TIMER:
                received.release_idle_parser(stream, release_after)
                await stream.tick()
                continue
            if not data or not stream.open:
                break  # the end, or the stream was closed (or resumed elsewhere) while we waited
            assert isinstance(data, bytes)
            await received.feed(connection, stream, data)
    except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
        stream.log.info("connection lost: %r", exc)
    finally:
        if not parked:
            await stream.connection_lost()
            await connection.finish()
