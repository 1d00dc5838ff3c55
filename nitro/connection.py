"""The I/O driver of one client connection: read bytes, feed the session, run its timers, close cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import TYPE_CHECKING

from nitro.c2s import ClientSession
from nitro.errors import StreamError

if TYPE_CHECKING:
    from nitro.server import Server

log = logging.getLogger(__name__)

READ_SIZE = 65536
MAX_WRITE_BUFFER = 8 * 1024 * 1024  # a client that stops reading is cut off past this
LINGER = 2.0  # seconds a closed stream keeps reading, waiting for the peer to close its side


class StreamTransport:
    """A `Transport` over asyncio streams, with STARTTLS and a lingering close."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: ssl.SSLContext | None
    ) -> None:
        self.reader = reader
        self.writer = writer
        self._tls = tls
        peer = writer.get_extra_info("peername")
        self.peer_host: str = str(peer[0]) if isinstance(peer, tuple) else "local"
        self.encrypted = writer.get_extra_info("sslcontext") is not None
        self.closing = False

    def write(self, data: bytes) -> None:
        if self.closing or self.writer.is_closing():
            return
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("%s is not reading; dropping the connection", self.peer_host)
            self.writer.transport.abort()

    async def start_tls(self) -> None:
        assert self._tls is not None
        await self.writer.drain()
        await self.writer.start_tls(self._tls)
        self.encrypted = True

    def close(self) -> None:
        """Write nothing more. The socket stays open for reading a little longer (`finish`): closing it
        with unread input would reset the connection and the peer might never see our last words (the
        stream error); RFC 6120 §4.4 has the closing side wait for the peer's close. The timer wakes a
        connection loop that is waiting for input when the close comes from elsewhere.
        """
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_later(LINGER, self.writer.close)

    async def finish(self) -> None:
        """Flush, read and discard until the peer closes (at most LINGER seconds), then close."""
        self.closing = True
        try:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.drain(), 1.0)
                async with asyncio.timeout(LINGER):
                    while await self.reader.read(READ_SIZE):
                        pass
        finally:
            self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


async def serve_client(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Run one connection to its end; this is its catch-log-close boundary.

    The loop drives whichever session owns this transport: after `<resume/>` (XEP-0198 §5) that is the
    older session the stream resumed; when another connection resumes our session, the loop just stops.
    """
    transport = StreamTransport(reader, writer, server.tls_context)
    session = ClientSession(server, transport)
    server.track(session)
    write_timeout = server.config.c2s.write_timeout
    try:
        while session.transport is transport and not session.closed and not transport.closing:
            timeout = max(0.0, session.next_deadline() - time.monotonic())
            try:
                data = await asyncio.wait_for(reader.read(READ_SIZE), timeout)
            except TimeoutError:
                await session.on_timer()
                continue
            if not data or session.transport is not transport or session.closed:
                break  # the end, or the stream was closed (or resumed elsewhere) while we waited
            await session.receive(data)
            session = session.current
            await asyncio.wait_for(writer.drain(), write_timeout)
    except StreamError as error:
        session = session.current
        if session.transport is transport:
            await session.close(error)
    except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
        session.current.log.info("connection lost: %r", exc)
    except Exception:
        session = session.current
        session.log.exception("internal error; closing the stream")
        if session.transport is transport:
            await session.close(StreamError("internal-server-error"))
    finally:
        session = session.current
        if session.transport is transport:
            await session.connection_lost()  # a resumable session detaches and stays tracked
        if session.closed:
            server.untrack(session)
        await transport.finish()
