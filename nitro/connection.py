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


class StreamTransport:
    """A `Transport` over asyncio streams, with STARTTLS."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: ssl.SSLContext | None
    ) -> None:
        self.reader = reader
        self.writer = writer
        self._tls = tls
        peer = writer.get_extra_info("peername")
        self.peer_host: str = str(peer[0]) if isinstance(peer, tuple) else "local"
        self.encrypted = writer.get_extra_info("sslcontext") is not None

    def write(self, data: bytes) -> None:
        if self.writer.is_closing():
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
        self.writer.close()


async def serve_client(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Run one connection to its end; this is its catch-log-close boundary."""
    transport = StreamTransport(reader, writer, server.tls_context)
    session = ClientSession(server, transport)
    server.track(session)
    write_timeout = server.config.c2s.write_timeout
    try:
        while not session.closed:
            timeout = max(0.0, session.next_deadline() - time.monotonic())
            try:
                data = await asyncio.wait_for(reader.read(READ_SIZE), timeout)
            except TimeoutError:
                await session.on_timer()
                continue
            if not data:
                break
            await session.receive(data)
            await asyncio.wait_for(writer.drain(), write_timeout)
    except StreamError as error:
        await session.close(error)
    except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
        session.log.info("connection lost: %r", exc)
    except Exception:
        session.log.exception("internal error; closing the stream")
        await session.close(StreamError("internal-server-error"))
    finally:
        await session.connection_lost()
        server.untrack(session)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.drain(), 1.0)
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
