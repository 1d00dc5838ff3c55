"""What every transport drives: the client stream of one connection, with its catch-log-close boundary.

A transport creates one `ClientStream` per connection (TCP socket, WebSocket, BOSH session), feeds it
events, ticks its timer and tells it when the connection is gone. The stream follows the session it drives:
after `<resume/>` (XEP-0198 §5) that is the older session; when another connection resumes ours, `open`
turns False and the transport stops.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from nitro.c2s.stream import ClientSession
from nitro.c2s.transport import Transport
from nitro.xmpp.errors import StreamError
from nitro.xmpp.xmlstream import StreamEvent

if TYPE_CHECKING:
    from nitro.server import Server

log = logging.getLogger(__name__)


class ClientStream:
    """One connection's stream; every method is an error boundary (a StreamError closes the stream with it,
    an unexpected exception closes it with `<internal-server-error/>`), so a transport needs no try/except."""

    __slots__ = ("_session", "transport")

    def __init__(self, server: Server, transport: Transport) -> None:
        self.transport = transport
        self._session = ClientSession(server, transport)
        server.track(self._session)

    @property
    def session(self) -> ClientSession:
        """The session this connection drives now (the resumed one after `<resume/>`)."""
        resumed = self._session.resumed
        if resumed is not None:
            self._session = resumed
        return self._session

    @property
    def open(self) -> bool:
        """Still ours and not closed: input should keep flowing to it."""
        session = self.session
        return session.transport is self.transport and not session.closed

    def activity(self) -> None:
        self.session.activity()

    def next_deadline(self) -> float:
        return self.session.next_deadline()

    async def receive(self, event: StreamEvent) -> bool:
        """Handle one input event; False once the stream is over (closed, or resumed elsewhere)."""
        try:
            await self.session.receive(event)
        except StreamError as error:
            await self.close(error)
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            self.session.log.info("connection lost: %r", exc)
            await self.connection_lost()
        except Exception:
            self.session.log.exception("internal error; closing the stream")
            await self.close(StreamError("internal-server-error"))
        return self.open

    async def tick(self) -> bool:
        """Run the stream's timer work (timeouts, pings, keepalives); False once the stream is over."""
        try:
            await self.session.on_timer()
        except StreamError as error:
            await self.close(error)
        except Exception:
            self.session.log.exception("internal error in a timer; closing the stream")
            await self.close(StreamError("internal-server-error"))
        return self.open

    async def close(self, error: StreamError | None = None) -> None:
        """Close the stream (the transport's own framing errors come here too), if it is still ours."""
        session = self.session
        if session.transport is self.transport:
            try:
                await session.close(error)
            except Exception:
                session.log.exception("internal error while closing")

    async def connection_lost(self) -> None:
        """The connection is gone: a resumable session detaches and stays tracked, any other ends."""
        session = self.session
        try:
            if session.transport is self.transport:
                await session.connection_lost()
        finally:
            if session.closed:
                session.server.untrack(session)
