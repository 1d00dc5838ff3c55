"""TLS run by Nitro for c2s (STARTTLS, RFC 6120 §5, and Direct TLS, XEP-0368): an `ssl.SSLObject` over two
memory BIOs between the socket's plain transport and the connection, in place of the event loop's SSL protocol
(uvloop's keeps a 256 KiB read buffer and a dozen objects per connection: ~6 KiB of each idle session, and it
allocates 256 KiB for every read; issue 16).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
import threading
from typing import Any

log = logging.getLogger(__name__)

READ_SIZE = 16 * 1024  # SSL_read returns one record's plaintext at most (2^14 bytes, RFC 8446 §5.1)
SLICE = 4 * 1024  # bytes handed to a memory BIO at once: a BIO keeps its largest buffer for good


class _SharedBIOs(threading.local):
    """The memory BIOs of every TLS connection of one thread (one event loop). A connection's records pass
    through them only within one call (bytes in, decrypted, plaintext handed on; plaintext in, encrypted,
    records written to the socket), and a BIO keeps the buffer of the largest write it had for good: a pair
    per connection held ~2.3 KiB of C heap per idle TLS session (issue 16)."""

    def __init__(self) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()


_BIOS = _SharedBIOs()


class State(enum.Enum):
    HANDSHAKING = 1
    OPEN = 2
    CLOSED = 3


class TLSTransport(asyncio.Transport, asyncio.Protocol):
    """The protocol of the plain transport `raw` and the transport of `app`, with TLS in between.

    Handshake: server side, bounded by `handshake_timeout` (then the connection is aborted with TimeoutError);
    a failure sends OpenSSL's alert and closes, and the app's `connection_lost` gets the error. `handshake()`
    waits for it (STARTTLS); what `app` writes before it is done is sent once it is (Direct TLS: a stream
    error to a refused client). Reading: whatever arrives is decrypted and handed on at once; pausing pauses
    the socket. A close_notify from the peer is the app's `eof_received`. Writing: encrypted at once and
    written to the socket, whose buffer gives the app its backpressure (`pause_writing`,
    `get_write_buffer_size`). `close` sends close_notify and closes the socket without waiting for the
    peer's (RFC 8446 §6.1 allows it; the stream lingered before).
    """

    __slots__ = (
        "_app",
        "_closing",
        "_error",
        "_incoming",
        "_outgoing",
        "_pending",
        "_raw",
        "_ssl",
        "_state",
        "_timer",
        "_waiter",
    )

    def __init__(
        self,
        raw: asyncio.Transport,
        app: asyncio.Protocol,
        context: ssl.SSLContext,
        handshake_timeout: float,
    ) -> None:
        self._raw = raw
        self._app = app
        self._incoming = _BIOS.incoming  # shared: empty between two calls (see `_emptied`)
        self._outgoing = _BIOS.outgoing
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._state = State.HANDSHAKING
        self._closing = False
        self._error: Exception | None = None  # why the handshake failed
        self._pending: list[bytes] | None = None  # written by the app before the handshake was done
        self._waiter: asyncio.Future[None] | None = None
        loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = loop.call_later(handshake_timeout, self._timed_out)
        raw.set_protocol(self)

    async def handshake(self) -> None:
        """Until the handshake is done; raises what ended it otherwise (ssl.SSLError, ConnectionError)."""
        if self._error is not None:
            raise self._error
        if self._state is State.HANDSHAKING:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        elif self._state is State.CLOSED:
            raise ConnectionResetError("the connection closed during the TLS handshake")

    # -- the protocol of the plain transport --------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._state is State.CLOSED or self._error is not None:
            return
        if self._closing and self._state is State.OPEN:
            return  # after our close_notify, what comes is not read (the stream is over)
        self._emptied()
        chunks: list[bytes] = []
        close_notify = False
        try:
            for piece in (data,) if len(data) <= SLICE else _slices(data):
                self._incoming.write(piece)
                if self._state is State.HANDSHAKING and not self._handshake_step():
                    continue
                if self._closing:
                    break  # closed as soon as the handshake was done (what the app wrote is sent)
                close_notify = self._decrypt(chunks)
                if close_notify:
                    break
        except ssl.SSLError as exc:
            self._fail(exc)
            return
        self._flush()  # handshake records, alerts, a KeyUpdate's answer
        self._emptied()  # what came after our close or the peer's close_notify is not read
        if chunks:
            self._app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if close_notify and self._state is State.OPEN and not self._app.eof_received():
            self.close()

    def eof_received(self) -> bool | None:
        if self._state is State.HANDSHAKING:
            self._fail(ConnectionResetError("the peer closed the connection during the TLS handshake"))
            return False
        return self._app.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = State.CLOSED
        self._cancel_timer()
        error = exc or self._error
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error or ConnectionResetError("the connection closed"))
        self._pending = None
        self._app.connection_lost(error)

    def pause_writing(self) -> None:
        self._app.pause_writing()

    def resume_writing(self) -> None:
        self._app.resume_writing()

    # -- the app's transport ----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._state is State.CLOSED:
            return
        if self._state is State.HANDSHAKING:
            if self._pending is None:
                self._pending = []
            self._pending.append(bytes(data))
            return
        self._emptied()
        try:
            self._encrypt(data)
        except ssl.SSLError as exc:
            self._fail(exc)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    def close(self) -> None:
        """close_notify, then the socket closes once its buffer is written; during the handshake, after what
        the app wrote was sent (bounded by the handshake's timeout)."""
        if self._closing or self._state is State.CLOSED:
            return
        self._closing = True
        if self._state is State.OPEN:
            self._emptied()
            self._shutdown()
        elif not self._pending:
            self._raw.close()

    def abort(self) -> None:
        self._closing = True
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self._state is State.CLOSED or self._raw.is_closing()

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def get_write_buffer_size(self) -> int:
        pending = sum(len(data) for data in self._pending) if self._pending else 0
        return self._raw.get_write_buffer_size() + pending

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._app

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "sslcontext":
            return self._ssl.context
        if name == "cipher":
            return self._ssl.cipher()
        if name == "peercert":
            return self._ssl.getpeercert()
        return self._raw.get_extra_info(name, default)

    # -- internals ----------------------------------------------------------------------------------------

    def _handshake_step(self) -> bool:
        """One step of the handshake with what has arrived; True once it is done."""
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return False
        self._state = State.OPEN
        self._cancel_timer()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        pending, self._pending = self._pending, None
        if pending:
            self._encrypt(b"".join(pending))
        if self._closing:
            self._shutdown()
        return True

    def _decrypt(self, chunks: list[bytes]) -> bool:
        """Append the plaintext available to `chunks`; True when the peer sent close_notify. (Reading stops
        when nothing is left rather than at SSLWantReadError: raising it costs more than the read.)"""
        incoming, pending, read = self._incoming, self._ssl.pending, self._ssl.read
        while incoming.pending or pending():
            try:
                chunk = read(READ_SIZE)
            except ssl.SSLWantReadError:
                return False  # the rest of a record has not come yet
            except ssl.SSLZeroReturnError:
                return True
            if not chunk:
                return True
            chunks.append(chunk)
        return False

    def _encrypt(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt `data` in records of at most SLICE bytes and write them to the socket."""
        if len(data) <= SLICE:
            self._ssl.write(data)
            self._flush()
            return
        records = []
        for piece in _slices(data):
            self._ssl.write(piece)
            records.append(self._outgoing.read())
        self._raw.write(b"".join(records))

    def _emptied(self) -> None:
        """Drop what another connection may have left in the shared BIOs (only when its records were not to
        be read or sent: a close, a failure); no connection ever sees another's bytes."""
        if self._incoming.pending:
            self._incoming.read()
        if self._outgoing.pending:
            self._outgoing.read()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self._raw.write(data)

    def _shutdown(self) -> None:
        # writes close_notify; SSLWantReadError: the peer's has not come (not waited for)
        with contextlib.suppress(ssl.SSLError):
            self._ssl.unwrap()
        self._flush()
        self._raw.close()

    def _fail(self, exc: Exception, abort: bool = False) -> None:
        """The handshake or a record failed: send the alert OpenSSL wrote (unless aborting) and close."""
        if self._state is State.CLOSED or self._error is not None:
            return
        self._error = exc
        self._closing = True
        self._pending = None
        self._cancel_timer()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)  # STARTTLS: raised in the stream, which logs it
        log.debug("TLS failed: %r", exc)  # the app's connection_lost gets it too
        if abort:
            self._raw.abort()
        else:
            self._flush()
            self._raw.close()
        self._emptied()  # the rest of what came is not read

    def _timed_out(self) -> None:
        self._timer = None
        if self._state is State.HANDSHAKING:
            self._fail(TimeoutError("the TLS handshake took too long"), abort=True)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _slices(data: bytes | bytearray | memoryview) -> list[memoryview]:
    view = memoryview(data)
    return [view[start : start + SLICE] for start in range(0, len(view), SLICE)]


def start_server_tls(
    raw: asyncio.Transport, app: asyncio.Protocol, context: ssl.SSLContext, handshake_timeout: float
) -> TLSTransport:
    """Put TLS (server side) between `raw` and `app`, from the next byte `raw` receives; the handshake runs as
    the client's records arrive (await `handshake()` for its end)."""
    return TLSTransport(raw, app, context, handshake_timeout)
