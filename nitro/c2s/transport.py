"""The seam between a client stream and its framing: elements, not bytes, cross it in both directions.

A transport (TCP, WebSocket, BOSH) owns its parser and its serialiser. It drives a `StreamHandler` with
stream-open, element and stream-close events and its timer, and the stream answers through `Transport`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from lxml import etree

from nitro.xmpp.errors import StreamError
from nitro.xmpp.xmlstream import StreamEvent


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """What our side of a stream declares (RFC 6120 §4.7; RFC 7395 `<open/>`; XEP-0206 session attributes)."""

    from_: str
    id: str | None
    to: str | None = None
    lang: str = "en"
    version: str | None = "1.0"


class Transport(Protocol):
    """What a stream needs from the connection that carries it.

    `send` takes one top-level element (stanza or nonza) and frames it: TCP writes it inside the open stream,
    WebSocket as one text frame declaring its namespace, BOSH inside the next `<body/>`.
    """

    kind: str  # "tcp", "tls" (Direct TLS), "websocket", "bosh": for logs, metrics and the admin channel
    peer_host: str
    encrypted: bool  # TLS is up, or HTTP from loopback or a trusted TLS-terminating proxy

    @property
    def can_starttls(self) -> bool:
        """STARTTLS (RFC 6120 §5) is possible on this transport now."""

    def open_stream(self, header: StreamHeader) -> None:
        """Our stream header; called once per stream (again after STARTTLS or SASL restarts it)."""

    def send(self, element: etree._Element) -> None:
        """Frame and queue one top-level element."""

    def send_keepalive(self) -> None:
        """Show the peer the connection is alive (whitespace, a WebSocket ping; nothing for BOSH)."""

    def restart(self) -> None:
        """The stream restarts (after SASL success, RFC 6120 §6.4.6): the next input is a new stream open."""

    async def start_tls(self) -> None:
        """Upgrade to TLS in place (after `<proceed/>` was queued); only when `can_starttls`."""

    def close_stream(self, error: StreamError | None) -> None:
        """Our last words: the stream error if any, then the stream close; the connection closes after."""

    def close(self) -> None:
        """Close the connection now, without more output."""


class StreamHandler(Protocol):
    """What a transport drives: the c2s stream of the connection."""

    def activity(self) -> None:
        """The peer showed it is alive: bytes arrived, a WebSocket pong, a BOSH request."""

    async def receive(self, event: StreamEvent) -> None:
        """One input event; raises StreamError for the transport to close the stream with."""

    async def close(self, error: StreamError | None = None) -> None:
        """Close the stream (with an error, e.g. from the transport's own framing checks)."""

    async def connection_lost(self) -> None:
        """The connection is gone (EOF, reset, or after close)."""

    def next_deadline(self) -> float:
        """The time.monotonic() at which `on_timer` is due next."""

    async def on_timer(self) -> None:
        """Timeouts, pings and keepalives; raises StreamError to close."""


class _NoTransport:
    """The transport of a session without a connection: a detached one, or a stream that resumed another."""

    kind = "none"
    peer_host = "detached"
    encrypted = True
    can_starttls = False

    def open_stream(self, header: StreamHeader) -> None:
        pass

    def send(self, element: etree._Element) -> None:
        pass  # a detached session's stanzas wait in its unacknowledged queue (XEP-0198 §5)

    def send_keepalive(self) -> None:
        pass

    def restart(self) -> None:
        pass

    async def start_tls(self) -> None:
        raise StreamError("policy-violation", "no connection")

    def close_stream(self, error: StreamError | None) -> None:
        pass

    def close(self) -> None:
        pass


NO_TRANSPORT = _NoTransport()
