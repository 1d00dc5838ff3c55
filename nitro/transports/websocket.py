"""XMPP over WebSocket (RFC 7395) at /xmpp-websocket: each text message is one element (see xmpp/framing.py),
WebSocket pings are the keepalive, and there is no STARTTLS (TLS is the HTTP server's, or a proxy's)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Final, Literal

from aiohttp import WSCloseCode, WSMsgType, web
from lxml import etree

from nitro.c2s.driver import ClientStream
from nitro.c2s.transport import StreamHeader
from nitro.transports.forwarded import WEBSOCKET_PATH, Network, Peer, peer_of, trusted_networks
from nitro.xmpp.errors import StreamError
from nitro.xmpp.framing import CLOSE, FrameParser, frame, open_message

if TYPE_CHECKING:
    from nitro.core.context import Core

log = logging.getLogger(__name__)

SUBPROTOCOL: Final = "xmpp"  # RFC 7395 §3.1
MAX_WRITE_BUFFER: Final = 8 * 1024 * 1024  # a client that lets this much output pile up is cut off
LINGER: Final = 2.0  # seconds our WebSocket close waits for the client's (RFC 6455 §7.1.1)
# A message over [c2s] max_stanza_bytes gets <policy-violation/>; aiohttp itself refuses (close code 1009)
# one this many times bigger, before it is buffered whole.
HARD_LIMIT_FACTOR: Final = 2
NOT_WEBSOCKET: Final = (
    "This is Nitro's XMPP over WebSocket endpoint (RFC 7395): connect with a WebSocket client and the "
    "'xmpp' subprotocol.\n"
)


class WebSocketConnection:
    """The `Transport` of a stream over one WebSocket.

    Output is queued (the stream's `send` is synchronous) and written in order by `write_loop`, which ends
    with our WebSocket close once the stream is closed; a client that does not read is cut off after
    write_timeout seconds or MAX_WRITE_BUFFER bytes.
    """

    kind = "websocket"
    can_starttls = False  # RFC 7395 §3.9: TLS is negotiated below the WebSocket (wss://), never in the stream

    def __init__(self, ws: web.WebSocketResponse[Literal[False]], peer: Peer, write_timeout: float) -> None:
        self.ws = ws
        self.peer_host = peer.host
        self.encrypted = peer.encrypted
        self.closing = False
        self.close_code = WSCloseCode.OK
        self._write_timeout = write_timeout
        self._out: collections.deque[tuple[bytes, WSMsgType]] = collections.deque()
        self._out_bytes = 0
        self._wake = asyncio.Event()

    # -- the stream's Transport ---------------------------------------------------------------------

    def open_stream(self, header: StreamHeader) -> None:
        self._queue(
            open_message(
                from_=header.from_, to=header.to, id=header.id, lang=header.lang, version=header.version
            )
        )

    def send(self, element: etree._Element) -> None:
        self._queue(frame(element))

    def send_keepalive(self) -> None:
        self._queue(b"", WSMsgType.PING)  # RFC 7395 §3.8: WebSocket pings, not whitespace

    def restart(self) -> None:
        """Nothing is buffered between messages: the client's next `<open/>` starts the new stream."""

    async def start_tls(self) -> None:
        raise StreamError("policy-violation", "no STARTTLS over WebSocket (RFC 7395 §3.9): use wss://")

    def close_stream(self, error: StreamError | None) -> None:
        """RFC 7395 §3.6: the stream error if any, `<close/>`, then the WebSocket closes."""
        if error is not None:
            self._queue(frame(error.to_element()))
        self._queue(CLOSE)
        self.close()

    def close(self) -> None:
        self.closing = True
        self._wake.set()

    def pong(self, data: bytes) -> None:
        self._queue(data, WSMsgType.PONG)

    def _queue(self, data: bytes, opcode: WSMsgType = WSMsgType.TEXT) -> None:
        if self.closing:
            return
        self._out.append((data, opcode))
        self._out_bytes += len(data)
        self._wake.set()
        if self._out_bytes > MAX_WRITE_BUFFER:
            log.warning("%s is not reading; dropping the WebSocket", self.peer_host)
            self.abort()

    def abort(self) -> None:
        """Drop the connection without a word (the peer cannot be written to)."""
        self.closing = True
        self._out.clear()
        self._out_bytes = 0
        self._wake.set()
        transport = self.ws.get_extra_info("transport")
        if transport is not None:
            transport.abort()

    # -- the writer task ---------------------------------------------------------------------------

    async def write_loop(self) -> None:
        """Write what is queued, in order; after the stream's close, close the WebSocket (which also ends
        the handler's `receive`)."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._out:
                    data, opcode = self._out.popleft()
                    self._out_bytes -= len(data)
                    async with asyncio.timeout(self._write_timeout):
                        await self.ws.send_frame(data, opcode)
                if self.closing:
                    break
        except TimeoutError:
            log.info(
                "%s read nothing for %.1f s; dropping the WebSocket", self.peer_host, self._write_timeout
            )
            self.abort()
        except ConnectionError as exc:
            log.debug("%s: WebSocket write failed: %r", self.peer_host, exc)
        finally:
            self.closing = True
            with contextlib.suppress(Exception):
                await self.ws.close(code=self.close_code)


class WebSocketEndpoint:
    """The request handler of /xmpp-websocket, and the set of its live streams (closed at shutdown)."""

    def __init__(self, server: Core) -> None:
        self.server = server
        self.networks: tuple[Network, ...] = trusted_networks(server.config.http.trusted_proxies)
        self.streams: set[ClientStream] = set()
        self._max_stanza_bytes = server.config.c2s.max_stanza_bytes

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(WEBSOCKET_PATH, self.handle)
        app.on_shutdown.append(self.shutdown)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws: web.WebSocketResponse[Literal[False]] = web.WebSocketResponse(
            decode_text=False,  # the parser takes bytes (and refuses bad UTF-8 as not-well-formed)
            protocols=(SUBPROTOCOL,),
            autoping=False,  # pings and pongs reach us: a pong shows the client is alive
            max_msg_size=self._max_stanza_bytes * HARD_LIMIT_FACTOR,
            timeout=LINGER,
            compress=False,
        )
        if not ws.can_prepare(request).ok:
            return web.Response(text=NOT_WEBSOCKET)  # a browser or curl looking at the URL, as Prosody
        offered = [token.strip() for token in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if SUBPROTOCOL not in offered:  # RFC 7395 §3.1: only the 'xmpp' subprotocol is spoken here
            log.info("%s: WebSocket without the 'xmpp' subprotocol refused", request.remote)
            return web.Response(status=400, text="400: the 'xmpp' WebSocket subprotocol is required\n")
        await ws.prepare(request)
        task = asyncio.current_task()
        if task is not None:
            self.server.connection_task(task)
        connection = WebSocketConnection(
            ws, peer_of(request, self.networks), self.server.config.c2s.write_timeout
        )
        stream = ClientStream(self.server, connection)
        self.streams.add(stream)
        writer = asyncio.create_task(connection.write_loop())
        try:
            await self._read_loop(ws, connection, stream)
        finally:
            self.streams.discard(stream)
            await stream.connection_lost()
            connection.close()
            try:
                async with asyncio.timeout(LINGER + self.server.config.c2s.write_timeout):
                    await writer
            except TimeoutError:
                connection.abort()
                writer.cancel()
        return ws

    async def _read_loop(
        self, ws: web.WebSocketResponse[Literal[False]], connection: WebSocketConnection, stream: ClientStream
    ) -> None:
        parser = FrameParser(max_stanza_bytes=self._max_stanza_bytes)
        while stream.open and not connection.closing:
            timeout = max(stream.next_deadline() - time.monotonic(), 0.001)  # 0 would mean no timeout
            try:
                message = await ws.receive(timeout)
            except TimeoutError:
                await stream.tick()
                continue
            if message.type is WSMsgType.TEXT:
                stream.activity()
                try:
                    event = parser.parse(message.data)
                except StreamError as error:
                    await stream.close(error)
                    return
                if event is not None and not await stream.receive(event):
                    return
            elif message.type is WSMsgType.BINARY:  # RFC 7395 §3.2: XMPP is UTF-8 text, in text messages
                connection.close_code = WSCloseCode.UNSUPPORTED_DATA  # 1003, as Prosody
                await stream.close(
                    StreamError("not-well-formed", "a binary WebSocket message (RFC 7395 §3.2)")
                )
                return
            elif message.type is WSMsgType.PING:
                stream.activity()
                connection.pong(message.data)
            elif message.type is WSMsgType.PONG:
                stream.activity()
            else:  # CLOSE, CLOSING, CLOSED, ERROR: the WebSocket is over; RFC 7395 §3.6: as a lost connection
                return

    async def shutdown(self, _app: web.Application) -> None:
        """`<system-shutdown/>` to every stream (RFC 6120 §4.9.3.19); their handlers then end. Together: one
        without stream management may wait for its proof of reading (nitro/c2s/read_proof.py)."""
        await asyncio.gather(*(stream.close(StreamError("system-shutdown")) for stream in list(self.streams)))


def add_routes(app: web.Application, server: Core) -> None:
    WebSocketEndpoint(server).add_routes(app)
