"""The writing side of a TCP connection (nitro/transports/tcp.py): what the stream writes is queued and sent
in one socket write per loop turn; a peer that stops reading is cut off."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nitro.c2s.driver import ClientStream

log = logging.getLogger(__name__)

MAX_WRITE_BUFFER = 8 * 1024 * 1024  # a client that stops reading is cut off past this


class Output(asyncio.Protocol):
    """`write` only queues; one `transport.write` per loop turn sends everything queued, so a fan-out of many
    stanzas to one client costs one system call. While the socket's send buffer is full, reading from the
    client pauses (backpressure); a client that leaves it full for write_timeout seconds, or lets
    MAX_WRITE_BUFFER bytes pile up, is cut off."""

    __slots__ = ("_flush_handle", "_out", "_out_bytes", "_write_paused", "_write_timeout", "_write_timer")

    # the connection's (nitro/transports/tcp.py)
    transport: asyncio.Transport | None
    closing: bool
    peer_host: str
    _loop: asyncio.AbstractEventLoop
    _stream: ClientStream | None

    def __init__(self, write_timeout: float) -> None:
        self._write_timeout = write_timeout
        self._out: list[bytes] | None = None  # None while empty (idle memory)
        self._out_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._write_paused = False
        self._write_timer: asyncio.Handle | None = None

    def pause_writing(self) -> None:
        """The socket's send buffer is full: stop reading the client until it reads, for a while."""
        self._write_paused = True
        self._pause_reading()
        if self._write_timer is None:
            self._write_timer = self._loop.call_later(self._write_timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._cancel_write_timer()
        self._maybe_resume_reading()

    def write(self, data: bytes) -> None:
        """Queue `data`; everything queued in this loop turn goes out in one socket write."""
        if self.closing or self.transport is None or self.transport.is_closing():
            return
        if self._out is None:
            self._out = [data]
        else:
            self._out.append(data)
        self._out_bytes += len(data)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is queued now; cut off a client whose unread output passed MAX_WRITE_BUFFER."""
        self._flush_handle = None
        out, self._out = self._out, None
        self._out_bytes = 0
        transport = self.transport
        if not out or transport is None or transport.is_closing():
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self._cut_off(f"{MAX_WRITE_BUFFER} bytes unread")

    def _pause_reading(self) -> None:
        raise NotImplementedError

    def _maybe_resume_reading(self) -> None:
        raise NotImplementedError

    def _write_timed_out(self) -> None:
        self._write_timer = None
        self._cut_off(f"nothing read for {self._write_timeout:.1f} s")

    def _cut_off(self, why: str) -> None:
        """Drop a client that does not read what we write, logged under its own session (this runs in the
        task of whoever wrote last, whose session the log context would otherwise name)."""
        stream = self._stream
        logger = stream.log if stream is not None else log
        logger.warning("%s is not reading (%s); dropping the connection", self.peer_host, why)
        if stream is not None:
            stream.note_end(f"not reading: {why}")
        if self.transport is not None:
            self.transport.abort()

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
