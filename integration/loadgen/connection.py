"""The asyncio driver of one load-generator client: a Protocol that feeds the sans-IO `Client`."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from typing import cast

from integration.loadgen.client import Client, Ended, LoggedIn, LoginPlan, Stanza, StartTls

TLS_HANDSHAKE_TIMEOUT = 30.0


class LoginFailed(Exception):
    """A client did not get to an established session; `fault` says whose fault it was."""

    def __init__(self, reason: str, fault: str | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fault = fault


StanzaHandler = Callable[["Connection", Stanza], None]


def _retrieve(future: asyncio.Future[float]) -> None:
    if not future.cancelled():
        future.exception()


def _ignore(_connection: Connection, _stanza: Stanza) -> None:
    pass


class Connection(asyncio.Protocol):
    """One client socket. `logged_in` resolves at the session's start; `ended` when the stream is over."""

    def __init__(self, plan: LoginPlan, ssl_context: ssl.SSLContext | None, on_stanza: StanzaHandler) -> None:
        self.client = Client(plan)
        self.plan = plan
        self.on_stanza = on_stanza
        self.ssl_context = ssl_context
        loop = asyncio.get_running_loop()
        self.logged_in: asyncio.Future[float] = loop.create_future()  # the time.monotonic() of login
        self.logged_in.add_done_callback(_retrieve)  # a failure nobody awaits any more is not an error
        self.ended: asyncio.Future[Ended] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.paused = False  # the kernel buffer towards the server is full: the server is not reading
        self._upgrade: asyncio.Task[None] | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport does not subclass it
        self.client.start()
        self._flush()

    def data_received(self, data: bytes) -> None:
        events = self.client.receive_data(data)
        self._flush()
        for event in events:
            if type(event) is Stanza:
                self.on_stanza(self, event)
            else:
                self._event(event)

    def connection_lost(self, exc: Exception | None) -> None:
        for event in self.client.connection_lost(None if exc is None else str(exc) or type(exc).__name__):
            self._event(event)
        self.transport = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    # --- used by scenarios ------------------------------------------------------------------------

    def send(self, stanza: bytes) -> None:
        """Write a stanza now (the hot path of the chat scenario: no copy through the client)."""
        if self.transport is not None and self.logged_in.done() and not self.ended.done():
            self.transport.write(stanza)

    async def close(self, timeout: float) -> None:
        """Close the stream and wait (bounded) for the server's </stream:stream>, then the socket."""
        if self.transport is not None and not self.ended.done():
            self.client.close()
            self._flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.ended), timeout)
        self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        if self._upgrade is not None:
            self._upgrade.cancel()

    # --- internals --------------------------------------------------------------------------------

    def _flush(self) -> None:
        data = self.client.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _event(self, event: object) -> None:
        if type(event) is LoggedIn:
            if not self.logged_in.done():
                self.logged_in.set_result(time.monotonic())
        elif type(event) is StartTls:
            self._upgrade = asyncio.get_running_loop().create_task(self._start_tls())
        elif isinstance(event, Ended):
            if not self.logged_in.done():
                self.logged_in.set_exception(LoginFailed(event.reason or "stream closed", event.fault))
            if not self.ended.done():
                self.ended.set_result(event)
            if self.transport is not None:
                self.transport.close()  # after the last write is flushed

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        try:
            if self.ssl_context is None:
                raise LoginFailed("server offered STARTTLS but no TLS context was given", "client")
            transport = await loop.start_tls(
                self.transport,
                self,
                self.ssl_context,
                server_hostname=self.plan.domain,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError, LoginFailed) as error:
            self._fail(f"TLS handshake failed: {type(error).__name__}: {error}", "server")
            return
        if transport is None:
            self._fail("TLS handshake failed: connection closed", "network")
            return
        self.transport = transport
        self.client.tls_established()
        self._flush()

    def _fail(self, reason: str, fault: str) -> None:
        if not self.logged_in.done():
            self.logged_in.set_exception(LoginFailed(reason, fault))
        if not self.ended.done():
            self.ended.set_result(Ended(reason, "network"))
        if self.transport is not None:
            self.transport.abort()


async def connect(
    host: str,
    port: int,
    plan: LoginPlan,
    *,
    ssl_context: ssl.SSLContext | None,
    timeout: float,
    on_stanza: StanzaHandler = _ignore,
) -> Connection:
    """Connect and log in; returns the established connection or raises LoginFailed (bounded by timeout)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        _, connection = await asyncio.wait_for(
            loop.create_connection(lambda: Connection(plan, ssl_context, on_stanza), host, port), timeout
        )
    except TimeoutError:
        raise LoginFailed("TCP connect timed out", "network") from None
    except OSError as error:
        raise LoginFailed(f"TCP connect failed: {error.strerror or error}", "network") from None
    try:
        await asyncio.wait_for(asyncio.shield(connection.logged_in), max(0.0, deadline - loop.time()))
    except TimeoutError:
        connection.abort()
        raise LoginFailed(
            f"no session after {timeout:g} s ({connection.client.phase.value})", "server"
        ) from None
    except BaseException:
        connection.abort()
        raise
    return connection
