"""A client session (RFC 6120): features → STARTTLS → SASL → bind → established, as one transition table.

The session owns no socket: it reads bytes handed to it and writes through a `Transport`.
"""

from __future__ import annotations

import enum
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

from lxml import etree

from nitro import ns
from nitro.authn import Authenticator, Challenge, mechanisms
from nitro.errors import StanzaError, StreamError, error_reply
from nitro.jid import JID, InvalidJID
from nitro.module import NonzaEvent, SessionEvent, StreamFeaturesEvent
from nitro.router import StanzaEvent
from nitro.sasl import SaslFailure, b64decode_strict, b64encode
from nitro.storage.errors import StorageUnavailable
from nitro.xmlstream import (
    STREAM_FOOTER,
    StanzaReceived,
    StreamClosed,
    StreamEvent,
    StreamOpened,
    XMLStreamParser,
    serialize,
    stream_header,
)

if TYPE_CHECKING:
    from nitro.server import Server

log = logging.getLogger(__name__)
_session_ids = itertools.count(1)

_STANZA_TAGS = frozenset({f"{{{ns.CLIENT}}}message", f"{{{ns.CLIENT}}}presence", f"{{{ns.CLIENT}}}iq"})
_INPUTS = {
    f"{{{ns.TLS}}}starttls": "starttls",
    f"{{{ns.SASL}}}auth": "auth",
    f"{{{ns.SASL}}}response": "response",
    f"{{{ns.SASL}}}abort": "abort",
}


class Transport(Protocol):
    """What a session needs from its connection."""

    peer_host: str
    encrypted: bool

    def write(self, data: bytes) -> None: ...
    async def start_tls(self) -> None: ...
    def close(self) -> None: ...


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every record with the session id and, once known, its JID; also puts both in `extra`."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        label = f"{extra.get('session')} {extra['jid']}" if "jid" in extra else f"{extra.get('session')}"
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"[{label}] {msg}", kwargs


class State(enum.Enum):
    WAIT_HEADER = "wait-header"  # a (new) stream header is due
    NEGOTIATING = "negotiating"  # features sent; STARTTLS, SASL or in-band registration next
    SASL = "sasl"  # a SASL exchange is under way
    BINDING = "binding"  # authenticated; resource binding next
    ESTABLISHED = "established"  # bound: stanzas flow
    CLOSED = "closed"


class ClientSession:
    """One client's stream: stamps 'from', negotiates, then hands stanzas to the router."""

    def __init__(self, server: Server, transport: Transport) -> None:
        self.server = server
        self.transport = transport
        self.id = f"c2s{next(_session_ids)}-{secrets.token_hex(4)}"
        self.log = SessionLog(log, {"session": self.id})
        self.config = server.config.c2s
        self.parser = XMLStreamParser(max_stanza_bytes=self.config.max_stanza_bytes)
        self.state = State.WAIT_HEADER
        self.lang = "en"
        self.stream_id = ""
        self.header_sent = False
        self.authenticated = False
        self.username: str | None = None
        self.mechanism: str | None = None  # the SASL mechanism that authenticated the stream
        self.jid = JID(None, server.config.server.domain, None)  # the full JID once bound
        # IM state that the roster and presence modules keep on the session (RFC 6121 terms).
        self.priority = 0
        self.presence: etree._Element | None = None  # last available presence broadcast, None if not
        self.interested = False  # requested the roster (RFC 6121 §2.1.6)
        self.directed_to: set[JID] = set()  # entities that got directed presence (§4.6)
        self.data: dict[str, Any] = {}  # per-module scratch space, keyed by module name
        # Outbound filters run in order on every `send`; one returning False holds the element back.
        self.outbound_filters: list[Callable[[etree._Element], bool]] = []
        self._auth: Authenticator | None = None
        self._auth_failures = 0
        now = time.monotonic()
        self.negotiation_deadline = now + self.config.negotiation_timeout
        self.last_read = now
        self.last_write = now
        self.ping_deadline: float | None = None
        self._ping_id: str | None = None

    def __repr__(self) -> str:
        return f"<ClientSession {self.id} {self.jid} {self.state.value}>"

    @property
    def available(self) -> bool:
        return self.presence is not None

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # -- bytes in -------------------------------------------------------------------------------

    async def receive(self, data: bytes) -> None:
        """Feed bytes from the transport; raises StreamError for the connection to close with."""
        self.last_read = time.monotonic()
        self.ping_deadline = None
        for event in self.parser.feed(data):
            if self.closed:
                return
            restart = await self._on_event(event)
            if restart:
                return  # the parser was reset: the rest of this chunk belonged to the old stream

    async def _on_event(self, event: StreamEvent) -> bool:
        if isinstance(event, StreamOpened):
            if self.state is not State.WAIT_HEADER:
                raise StreamError("invalid-xml", "unexpected stream header")
            await self._on_header(event)
            return False
        if isinstance(event, StreamClosed):
            await self.close()
            return False
        assert isinstance(event, StanzaReceived)
        element = event.element
        kind = _INPUTS.get(element.tag)
        if kind is None and element.tag in _STANZA_TAGS:
            kind = "bind" if _is_bind(element) else "stanza"
        handler = _TRANSITIONS.get((self.state, kind or "nonza"))
        if handler is None:
            raise self._unexpected(kind or element.tag)
        return await handler(self, element) or False

    def _unexpected(self, what: str) -> StreamError:
        if not self.authenticated and self.state is not State.WAIT_HEADER:
            return StreamError("not-authorized", f"{what} is not allowed before authentication")
        return StreamError("policy-violation", f"{what} is not allowed in state {self.state.value}")

    # -- negotiation ------------------------------------------------------------------------------

    async def _on_header(self, opened: StreamOpened) -> None:
        domain = self.server.config.server.domain
        self.lang = opened.lang or self.lang
        self.stream_id = secrets.token_hex(8)
        self.transport.write(stream_header(from_=domain, to=opened.from_, id=self.stream_id, lang=self.lang))
        self.header_sent = True
        if opened.to is None or _domain_of(opened.to) != domain:
            raise StreamError("host-unknown", f"this server serves {domain}")
        if opened.version is None or not opened.version.startswith("1."):
            raise StreamError("unsupported-version", "XMPP 1.0 streams only (RFC 6120 §4.7.5)")
        self.state = State.NEGOTIATING if not self.authenticated else State.BINDING
        self.send(await self._features())

    async def _features(self) -> etree._Element:
        features = etree.Element(f"{{{ns.STREAM}}}features", nsmap={"stream": ns.STREAM})
        if not self.authenticated:
            tls_available = self.server.tls_context is not None
            if tls_available and not self.transport.encrypted:
                starttls = etree.SubElement(features, f"{{{ns.TLS}}}starttls", nsmap=ns.default_ns(ns.TLS))
                if self.config.require_encryption:
                    etree.SubElement(starttls, f"{{{ns.TLS}}}required")
                    return features  # nothing else until TLS is up (RFC 6120 §5.3.1)
            mechs = etree.SubElement(features, f"{{{ns.SASL}}}mechanisms", nsmap=ns.default_ns(ns.SASL))
            for name in self._mechanisms():
                etree.SubElement(mechs, f"{{{ns.SASL}}}mechanism").text = name
        else:
            etree.SubElement(features, f"{{{ns.BIND}}}bind", nsmap=ns.default_ns(ns.BIND))
            session = etree.SubElement(features, f"{{{ns.SESSION}}}session", nsmap=ns.default_ns(ns.SESSION))
            etree.SubElement(session, f"{{{ns.SESSION}}}optional")  # RFC 3921 session is a no-op
        await self.server.bus.fire("stream-features", StreamFeaturesEvent(self, features))
        return features

    def _mechanisms(self) -> list[str]:
        return mechanisms(
            encrypted=self.transport.encrypted, allow_plain_without_tls=self.config.allow_plain_without_tls
        )

    @property
    def may_negotiate(self) -> bool:
        """False while TLS is required but not yet up: only STARTTLS is allowed then."""
        return self.transport.encrypted or not (
            self.config.require_encryption and self.server.tls_context is not None
        )

    async def _on_starttls(self, _element: etree._Element) -> bool:
        if self.transport.encrypted or self.server.tls_context is None:
            raise StreamError("policy-violation", "STARTTLS is not available on this stream")
        self.send(etree.Element(f"{{{ns.TLS}}}proceed", nsmap=ns.default_ns(ns.TLS)))
        await self.transport.start_tls()
        return self._restart()

    def _restart(self) -> bool:
        """Expect a fresh stream header (after TLS or SASL, RFC 6120 §5.4.3.3, §6.4.6)."""
        self.parser.reset()
        self.state = State.WAIT_HEADER
        return True

    async def _on_auth(self, element: etree._Element) -> bool:
        if not self.may_negotiate:
            raise StreamError("policy-violation", "TLS is required before authentication")
        mechanism = element.get("mechanism") or ""
        if self.server.auth_throttle.blocked(self.transport.peer_host):
            self._sasl_failure(SaslFailure("temporary-auth-failure", "too many failed logins, wait a minute"))
            return False
        if mechanism not in self._mechanisms():
            self._sasl_failure(SaslFailure("invalid-mechanism", f"{mechanism!r} is not offered"))
            return False
        self._auth = Authenticator(mechanism, self.server.storage.accounts, self.server.config.server.domain)
        self.state = State.SASL
        return await self._sasl_step(element)

    async def _on_response(self, element: etree._Element) -> bool:
        return await self._sasl_step(element)

    async def _on_abort(self, _element: etree._Element) -> bool:
        self._auth = None
        self.state = State.NEGOTIATING
        self._send_sasl("failure", None, condition="aborted")
        return False

    async def _sasl_step(self, element: etree._Element) -> bool:
        assert self._auth is not None
        text = (element.text or "").strip()
        try:
            step = await self._auth.step(b64decode_strict(text) if text else None)
        except SaslFailure as failure:
            self._sasl_failure(failure)
            return False
        except StorageUnavailable:
            self._sasl_failure(SaslFailure("temporary-auth-failure", "account store unavailable"))
            return False
        if isinstance(step, Challenge):
            self._send_sasl("challenge", step.data)
            return False
        self.username = step.username
        self.mechanism = self._auth.mechanism
        self.authenticated = True
        self._auth = None
        self.jid = JID.make(step.username, self.server.config.server.domain)
        self.log.extra = {"session": self.id, "jid": self.jid}
        self.log.info("authenticated as %s", self.jid)
        self._send_sasl("success", step.data)
        return self._restart()

    def _sasl_failure(self, failure: SaslFailure) -> None:
        self._auth = None
        self.state = State.NEGOTIATING
        self._send_sasl("failure", None, condition=failure.condition, text=failure.text)
        if failure.condition in ("not-authorized", "invalid-authzid"):
            self.server.auth_throttle.record_failure(self.transport.peer_host)
            self._auth_failures += 1
            self.log.info("failed login from %s (%s)", self.transport.peer_host, failure.condition)
            if self._auth_failures >= self.server.config.auth.max_failures_per_stream:
                raise StreamError("not-authorized", "too many failed attempts (RFC 6120 §6.4.5)")

    def _send_sasl(
        self, name: str, data: bytes | None, *, condition: str = "", text: str | None = None
    ) -> None:
        element = etree.Element(f"{{{ns.SASL}}}{name}", nsmap=ns.default_ns(ns.SASL))
        if condition:
            etree.SubElement(element, f"{{{ns.SASL}}}{condition}")
            if text:
                etree.SubElement(element, f"{{{ns.SASL}}}text").text = text
        elif data is not None:
            element.text = b64encode(data)
        self.send(element)

    async def _on_unauthenticated_iq(self, element: etree._Element) -> bool:
        """Before login only in-band registration (XEP-0077) may be spoken, and only when TLS allows."""
        payload = _payload(element)
        if not self.may_negotiate or element.tag != f"{{{ns.CLIENT}}}iq" or payload is None:
            raise self._unexpected(etree.QName(element).localname)
        name = f"c2s-unauthenticated/iq-{element.get('type')}/{payload.namespace}:{payload.localname}"
        event = StanzaEvent(element, self, self.jid, None, "host", self.server)
        try:
            handled = await self.server.bus.fire(name, event)
        except StanzaError as error:
            self.send(error_reply(element, error))
            return False
        if not handled:
            raise self._unexpected(f"iq {payload.namespace}")
        return False

    async def _on_bind(self, iq: etree._Element) -> bool:
        """Resource binding (RFC 6120 §7): the server picks a resource if the client names none."""
        assert self.username is not None
        requested = iq.findtext(f"{{{ns.BIND}}}bind/{{{ns.BIND}}}resource")
        domain = self.server.config.server.domain
        try:
            jid = JID.make(
                self.username, domain, requested.strip() if requested and requested.strip() else None
            )
        except InvalidJID as exc:
            self.send(error_reply(iq, StanzaError("bad-request", f"resource not allowed: {exc}")))
            return False
        if jid.resource is None:
            jid = jid.with_resource(f"nitro-{secrets.token_hex(6)}")
        self.jid = jid
        self.log.extra = {"session": self.id, "jid": jid}
        previous = self.server.sessions.add(self)
        if previous is not None:  # RFC 6120 §7.7.2.2: the new session wins, the old one is told why
            await previous.close(StreamError("conflict", "replaced by a new session with this resource"))
        result = etree.Element("iq", type="result")
        if iq.get("id") is not None:
            result.set("id", iq.get("id") or "")
        bind = etree.SubElement(result, f"{{{ns.BIND}}}bind", nsmap=ns.default_ns(ns.BIND))
        etree.SubElement(bind, f"{{{ns.BIND}}}jid").text = str(jid)
        self.send(result)
        self.state = State.ESTABLISHED
        await self.server.bus.fire("resource-bind", SessionEvent(self))
        return False

    async def _on_nonza(self, element: etree._Element) -> bool:
        """A top-level element that is no stanza (XEP-0198 `<r/>`, XEP-0352 `<active/>`, …): modules
        hook `c2s-nonza/<ns>:<name>` with a NonzaEvent; nothing claiming it is a stream error."""
        name = etree.QName(element)
        if not await self.server.bus.fire(
            f"c2s-nonza/{name.namespace}:{name.localname}", NonzaEvent(self, element)
        ):
            raise StreamError(
                "unsupported-stanza-type", f"<{name.localname} xmlns='{name.namespace}'/> is not supported"
            )
        return False

    async def _on_second_bind(self, iq: etree._Element) -> bool:
        self.send(error_reply(iq, StanzaError("not-allowed", "this stream already has a resource")))
        return False

    # -- established ------------------------------------------------------------------------------

    async def _on_stanza(self, stanza: etree._Element) -> bool:
        """Stamp 'from' with the session's full JID (RFC 6120 §8.1.2.1) and route."""
        claimed = stanza.get("from")
        if claimed is not None and claimed != str(self.jid):
            try:
                claimed_jid = JID.parse(claimed)
            except InvalidJID as exc:
                raise StreamError("invalid-from", f"'from' is not a JID: {exc}") from exc
            if claimed_jid not in (self.jid, self.jid.bare):
                raise StreamError("invalid-from", "'from' does not match the authenticated JID")
        stanza.set("from", str(self.jid))
        if stanza.get(f"{{{ns.XML}}}lang") is None:
            stanza.set(f"{{{ns.XML}}}lang", self.lang)  # RFC 6120 §4.7.4
        if self._is_ping_reply(stanza):
            return False
        await self.server.router.route(stanza, origin=self)
        return False

    # -- bytes out --------------------------------------------------------------------------------

    def send(self, element: etree._Element) -> None:
        """Send a stanza or nonza, unless an outbound filter (e.g. CSI, XEP-0352) holds it back."""
        if self.closed:
            return
        for keep in self.outbound_filters:
            if not keep(element):
                return
        self.write_element(element)

    def write_element(self, element: etree._Element) -> None:
        """Write past the outbound filters (a filter flushing what it held uses this)."""
        if self.closed:
            return
        self.transport.write(serialize(element))
        self.last_write = time.monotonic()

    async def close(self, error: StreamError | None = None) -> None:
        """Close the stream: an error if any, then `</stream:stream>` (RFC 6120 §4.4, §4.9.1.2)."""
        if self.closed:
            return
        if error is not None:
            self.log.info("closing with <%s/>: %s", error.condition, error.text)
            if not self.header_sent:
                self.transport.write(stream_header(from_=self.server.config.server.domain, to=None, id=None))
            self.transport.write(serialize(error.to_element()))
        self.transport.write(STREAM_FOOTER)
        await self._finish()
        self.transport.close()

    async def connection_lost(self) -> None:
        """The transport is gone (EOF, reset, or after close): leave the session registry."""
        await self._finish()

    async def _finish(self) -> None:
        if self.closed:
            return
        was_bound = self.state is State.ESTABLISHED
        self.state = State.CLOSED
        if was_bound:
            self.server.sessions.remove(self)
            await self.server.bus.fire("resource-unbind", SessionEvent(self))

    # -- timers (driven by the connection) ----------------------------------------------------------

    def next_deadline(self) -> float:
        """The monotonic time at which `on_timer` must run next."""
        if self.state is not State.ESTABLISHED:
            return self.negotiation_deadline
        if self.ping_deadline is not None:
            return self.ping_deadline
        return min(
            self.last_read + self.config.idle_ping_after, self.last_write + self.config.keepalive_interval
        )

    async def on_timer(self) -> None:
        """Negotiation timeout, idle-client ping (XEP-0199 §4.2), whitespace keepalive (RFC 6120 §4.6.1)."""
        now = time.monotonic()
        if self.state is not State.ESTABLISHED:
            if now >= self.negotiation_deadline:
                raise StreamError("connection-timeout", "stream negotiation took too long")
            return
        if self.ping_deadline is not None and now >= self.ping_deadline:
            raise StreamError("connection-timeout", "no answer to ping")
        if self.ping_deadline is None and now >= self.last_read + self.config.idle_ping_after:
            self._ping_id = f"ping-{secrets.token_hex(4)}"
            ping = etree.Element("iq", type="get", id=self._ping_id, to=str(self.jid))
            ping.set("from", self.server.config.server.domain)
            etree.SubElement(ping, f"{{{ns.PING}}}ping", nsmap=ns.default_ns(ns.PING))
            self.send(ping)
            self.ping_deadline = now + self.config.ping_timeout
        elif now >= self.last_write + self.config.keepalive_interval:
            self.transport.write(b" ")
            self.last_write = now

    def _is_ping_reply(self, stanza: etree._Element) -> bool:
        if self._ping_id is None or stanza.get("id") != self._ping_id or stanza.tag != f"{{{ns.CLIENT}}}iq":
            return False
        if stanza.get("type") not in ("result", "error"):
            return False
        self._ping_id = None
        return True


def _is_bind(element: etree._Element) -> bool:
    return element.get("type") == "set" and element.find(f"{{{ns.BIND}}}bind") is not None


def _payload(element: etree._Element) -> etree.QName | None:
    children = [child for child in element if isinstance(child.tag, str)]
    return etree.QName(children[0]) if len(children) == 1 else None


def _domain_of(text: str) -> str | None:
    try:
        return JID.parse(text).domain
    except InvalidJID:
        return None


_Handler = Callable[[ClientSession, etree._Element], Awaitable[bool]]

# Every (state, input) the session accepts; anything else is a stream error naming both.
_TRANSITIONS: dict[tuple[State, str], _Handler] = {
    (State.NEGOTIATING, "starttls"): ClientSession._on_starttls,
    (State.NEGOTIATING, "auth"): ClientSession._on_auth,
    (State.NEGOTIATING, "stanza"): ClientSession._on_unauthenticated_iq,
    (State.SASL, "response"): ClientSession._on_response,
    (State.SASL, "abort"): ClientSession._on_abort,
    (State.BINDING, "bind"): ClientSession._on_bind,
    (State.ESTABLISHED, "stanza"): ClientSession._on_stanza,
    (State.ESTABLISHED, "bind"): ClientSession._on_second_bind,
    (State.ESTABLISHED, "nonza"): ClientSession._on_nonza,
}
