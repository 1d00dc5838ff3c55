"""A client session (RFC 6120): features → STARTTLS → SASL → bind → established, as one transition table.

The session owns no socket: it reads bytes handed to it and writes through a `Transport`. With Stream
Management (XEP-0198) it counts and queues stanzas, survives the loss of its transport (DETACHED) and
continues on the transport of a newer stream that resumes it.
"""

from __future__ import annotations

import enum
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from lxml import etree

from nitro.c2s.authn import Authenticator, Challenge, mechanisms
from nitro.c2s.sm import (
    SM,
    ResumeRequest,
    SmState,
    UnackedStanzas,
    ack,
    ack_request,
    enabled,
    failed,
    is_stanza,
    parse_h,
    resumed,
)
from nitro.c2s.transport import StreamHeader, Transport
from nitro.core.module import NonzaEvent, SessionEvent, StreamFeaturesEvent
from nitro.core.router import StanzaEvent
from nitro.observe.logs import SessionLog, enter_session
from nitro.storage.errors import StorageUnavailable
from nitro.xmpp import ns
from nitro.xmpp.errors import StanzaError, StreamError, error_reply
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.sasl import SaslFailure, b64decode_strict, b64encode
from nitro.xmpp.xmlstream import StanzaReceived, StreamClosed, StreamEvent, StreamOpened

if TYPE_CHECKING:
    from nitro.server import Server

log = logging.getLogger(__name__)
_session_ids = itertools.count(1)

_XML_LANG = f"{{{ns.XML}}}lang"
_IQ = f"{{{ns.CLIENT}}}iq"
_STANZA_TAGS = frozenset({f"{{{ns.CLIENT}}}message", f"{{{ns.CLIENT}}}presence", f"{{{ns.CLIENT}}}iq"})
_INPUTS = {
    f"{{{ns.TLS}}}starttls": "starttls",
    f"{{{ns.SASL}}}auth": "auth",
    f"{{{ns.SASL}}}response": "response",
    f"{{{ns.SASL}}}abort": "abort",
    f"{{{SM}}}enable": "sm-enable",
    f"{{{SM}}}resume": "sm-resume",
    f"{{{SM}}}r": "sm-request",
    f"{{{SM}}}a": "sm-ack",
}


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


class State(enum.Enum):
    WAIT_HEADER = "wait-header"  # a (new) stream header is due
    NEGOTIATING = "negotiating"  # features sent; STARTTLS, SASL or in-band registration next
    SASL = "sasl"  # a SASL exchange is under way
    BINDING = "binding"  # authenticated; resource binding next
    ESTABLISHED = "established"  # bound: stanzas flow
    DETACHED = "detached"  # bound and resumable, connection lost: stanzas queue until resumed (XEP-0198 §5)
    CLOSED = "closed"


class ClientSession:
    """One client's stream: stamps 'from', negotiates, then hands stanzas to the router."""

    def __init__(self, server: Server, transport: Transport) -> None:
        self.server = server
        self.transport = transport
        self.id = f"c2s{next(_session_ids)}-{secrets.token_hex(4)}"
        self.log = SessionLog(log, {"session": self.id})
        enter_session(self.log)  # made in the connection's own task: its log lines name this session
        server.metrics.connection_opened()
        self.config = server.config.c2s
        self.state = State.WAIT_HEADER
        self.lang = "en"
        self.stream_id = ""
        self.header_sent = False
        self.authenticated = False
        self.username: str | None = None
        self.mechanism: str | None = None  # the SASL mechanism that authenticated the stream
        self._jid = JID(None, server.config.server.domain, None)
        self.jid_text = str(self._jid)  # str(self.jid), computed once per change: every stanza is stamped
        # IM state that the roster and presence modules keep on the session (RFC 6121 terms).
        self.priority = 0
        self.presence: etree._Element | None = None  # last available presence broadcast, None if not
        self.interested = False  # requested the roster (RFC 6121 §2.1.6)
        self.directed_to: set[JID] = set()  # entities that got directed presence (§4.6)
        self.data: dict[str, Any] = {}  # per-module scratch space, keyed by module name
        # Outbound filters run in order on every `send`; one returning False holds the element back.
        self.outbound_filters: list[Callable[[etree._Element], bool]] = []
        self.sm: SmState | None = None  # Stream Management (XEP-0198), once enabled
        self.successor: ClientSession | None = None  # the session this stream resumed (XEP-0198 §5)
        self._ending = False  # a close is scheduled (too many unacknowledged stanzas)
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
    def jid(self) -> JID:
        """The user's bare JID once authenticated, the full JID once bound; the domain before."""
        return self._jid

    @jid.setter
    def jid(self, jid: JID) -> None:
        self._jid = jid
        self.jid_text = str(jid)

    @property
    def available(self) -> bool:
        return self.presence is not None

    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # -- elements in -----------------------------------------------------------------------------

    def activity(self) -> None:
        """The peer showed it is alive (any input, a WebSocket pong, a BOSH request)."""
        session = self.current
        session.last_read = time.monotonic()
        session.ping_deadline = None

    async def receive(self, event: StreamEvent) -> None:
        """One event from the transport; raises StreamError for the connection to close with."""
        session = self.current  # after `<resume/>` the input belongs to the resumed session
        if session.closed:
            return
        await session._on_event(event)

    @property
    def current(self) -> ClientSession:
        """The session this stream now drives: itself, or the older one it resumed (XEP-0198 §5)."""
        return self.successor if self.successor is not None else self

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
        self.server.metrics.stanza_received(element.tag)
        kind = _INPUTS.get(element.tag)
        if kind is None and element.tag in _STANZA_TAGS:
            kind = "bind" if _is_bind(element) else "stanza"
        handler = _TRANSITIONS.get((self.state, kind or "nonza"))
        if handler is None:
            raise self._unexpected(kind or element.tag)
        restart = await handler(self, element)
        if kind in ("stanza", "bind") and self.sm is not None and not self.closed:
            self.sm.received()  # XEP-0198 §4: counted once handled
        return restart

    def _unexpected(self, what: str) -> StreamError:
        if not self.authenticated and self.state is not State.WAIT_HEADER:
            return StreamError("not-authorized", f"{what} is not allowed before authentication")
        return StreamError("policy-violation", f"{what} is not allowed in state {self.state.value}")

    # -- negotiation ------------------------------------------------------------------------------

    async def _on_header(self, opened: StreamOpened) -> None:
        domain = self.server.config.server.domain
        self.lang = opened.lang or self.lang
        self.stream_id = secrets.token_hex(8)
        self.transport.open_stream(
            StreamHeader(from_=domain, to=opened.from_, id=self.stream_id, lang=self.lang)
        )
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
            if tls_available and self.transport.can_starttls:
                starttls = etree.SubElement(features, f"{{{ns.TLS}}}starttls", nsmap=ns.default_ns(ns.TLS))
                if self.config.require_encryption:
                    etree.SubElement(starttls, f"{{{ns.TLS}}}required")
                    return features  # nothing else until TLS is up (RFC 6120 §5.3.1)
            elif not self.may_negotiate:
                # Encryption is required and this transport cannot add it (WebSocket or BOSH over plain HTTP
                # from afar, RFC 7395 §3.8): no feature would lead anywhere, so say why now, as Prosody does
                # (it closes such a stream when it has no feature to offer).
                raise StreamError("policy-violation", "encryption is required: connect over TLS (https, wss)")
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
        if not self.transport.can_starttls or self.server.tls_context is None:
            raise StreamError("policy-violation", "STARTTLS is not available on this stream")
        self.send(etree.Element(f"{{{ns.TLS}}}proceed", nsmap=ns.default_ns(ns.TLS)))
        await self.transport.start_tls()
        return self._restart()

    def _restart(self) -> bool:
        """Expect a fresh stream header (after TLS or SASL, RFC 6120 §5.4.3.3, §6.4.6)."""
        self.transport.restart()
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

    # -- stream management (XEP-0198) -------------------------------------------------------------------

    async def _on_enable(self, element: etree._Element) -> bool:
        """§3: counting starts with `<enabled/>`; resume='true' lets the session outlive its connection."""
        if self.sm is not None:
            self.write_element(failed("unexpected-request", "stream management is already enabled"))
            return False
        if not self.server.bus.has("sm-enabled"):  # the stream_management module is not loaded
            self.write_element(failed("service-unavailable", "stream management is not offered"))
            return False
        timeout = self.server.config.stream_management.resume_timeout
        requested = element.get("max") or ""
        if requested.isascii() and requested.isdigit() and int(requested) > 0:
            timeout = min(timeout, float(requested))  # §3: the client's preferred maximum
        self.sm = SmState.start(resume=element.get("resume") in ("true", "1"), resume_timeout=timeout)
        self.write_element(enabled(self.sm))  # nothing awaited in between: no stanza slips in uncounted
        self.log.debug("stream management enabled%s", " (resumable)" if self.sm.resumable else "")
        await self.server.bus.fire("sm-enabled", SessionEvent(self))
        return False

    async def _on_enable_unbound(self, _element: etree._Element) -> bool:
        """§3: a client enables stream management after resource binding, never before."""
        self.write_element(failed("unexpected-request", "bind a resource first, or resume"))
        return False

    async def _on_request(self, _element: etree._Element) -> bool:
        """§4: `<r/>` is answered with the count of stanzas handled so far."""
        self.write_element(ack(self._stream_management()))
        return False

    async def _on_ack(self, element: etree._Element) -> bool:
        """§4: `<a h/>` releases the stanzas it covers; an impossible 'h' ends the stream."""
        self._stream_management().acknowledge(parse_h(element.get("h")))
        return False

    def _stream_management(self) -> SmState:
        if self.sm is None:
            raise StreamError("unsupported-stanza-type", "stream management is not enabled (XEP-0198 §3)")
        return self.sm

    async def _on_resume_bound(self, _element: etree._Element) -> bool:
        self.write_element(failed("unexpected-request", "this stream already has a session"))
        return False

    async def _on_resume(self, element: etree._Element) -> bool:
        """§5: an authenticated stream takes over a session of the same user instead of binding."""
        previd = element.get("previd") or ""
        h = parse_h(element.get("h"))
        request = ResumeRequest(self, previd)
        await self.server.bus.fire("sm-resume", request)
        old = request.found
        if (
            old is None
            or old.closed
            or old.sm is None
            or old.sm.id != previd
            or old.username != self.username
            or old.jid.bare != self.jid.bare
        ):
            self.log.info("no session to resume for the id given")
            self.write_element(failed("item-not-found", "unknown or expired session id"))
            return False  # still BINDING: the client may bind a new session
        assert old.sm is not None
        old.sm.acknowledge(h)  # raises before any change if 'h' is impossible
        if old.state is State.ESTABLISHED:  # the old connection looks alive but the client has moved on
            old.log.info("resumed on another connection; closing this one")
            old._drop_transport(StreamError("conflict", "this session was resumed on another connection"))
        old._take_over(self)
        old.log.info("resumed (%d stanzas to resend)", len(old.sm.unacked))
        old.write_element(resumed(old.sm))
        for stanza in old.sm.unacked:
            old.transport.send(stanza)  # §5: what the client did not acknowledge, in order
        old.sm.ack_requested = False
        if old.sm.unacked:
            old.sm.ack_requested = True
            old.transport.send(ack_request())
        await self.server.bus.fire("sm-resumed", SessionEvent(old))
        return False

    def _take_over(self, stream: ClientSession) -> None:
        """§5: continue on the transport of `stream`, which authenticated as this user."""
        self.transport, stream.transport = stream.transport, NO_TRANSPORT
        self.stream_id = stream.stream_id
        self.lang = stream.lang
        self.header_sent = True
        self.mechanism = stream.mechanism
        self.last_read = self.last_write = time.monotonic()
        self.ping_deadline = None
        self._ping_id = None
        self.state = State.ESTABLISHED
        stream.state = State.CLOSED
        stream.successor = self
        self.server.untrack(stream)
        self.server.track(self)
        enter_session(self.log)  # the resuming connection's task now works for this session

    def _drop_transport(self, error: StreamError | None) -> None:
        """Write a last error and close the transport, keeping the session."""
        transport, self.transport = self.transport, NO_TRANSPORT
        transport.close_stream(error)

    async def _detach(self) -> None:
        """§5: the connection is gone but the session stays bound and available; stanzas to it queue
        until a new stream resumes it or the stream_management module ends it when the window closes.
        """
        assert self.sm is not None
        self.state = State.DETACHED
        self.transport = NO_TRANSPORT
        sm = self.sm
        sm.jid = self.jid_text
        sm.priority = self.priority
        sm.presence = None if self.presence is None else etree.tostring(self.presence, encoding="utf-8")
        sm.interested = self.interested
        sm.directed_to = tuple(sorted(str(jid) for jid in self.directed_to))
        sm.resume_deadline = time.time() + sm.resume_timeout
        self.log.info("connection lost; resumable for %.1f s", sm.resume_timeout)
        await self.server.bus.fire("sm-detached", SessionEvent(self))

    @property
    def detached(self) -> bool:
        """Bound and waiting for a stream to resume it (XEP-0198 §5)."""
        return self.state is State.DETACHED

    @property
    def resumable(self) -> bool:
        return self.state is State.ESTABLISHED and self.sm is not None and self.sm.resumable

    # -- established ------------------------------------------------------------------------------

    async def _on_stanza(self, stanza: etree._Element) -> bool:
        """Stamp 'from' with the session's full JID (RFC 6120 §8.1.2.1) and route."""
        jid_text = self.jid_text
        claimed = stanza.get("from")
        if claimed is not None and claimed != jid_text:
            try:
                claimed_jid = JID.parse(claimed)
            except InvalidJID as exc:
                raise StreamError("invalid-from", f"'from' is not a JID: {exc}") from exc
            if claimed_jid not in (self.jid, self.jid.bare):
                raise StreamError("invalid-from", "'from' does not match the authenticated JID")
        stanza.set("from", jid_text)
        if stanza.get(_XML_LANG) is None:
            stanza.set(_XML_LANG, self.lang)  # RFC 6120 §4.7.4
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
        """Write past the outbound filters (a filter flushing what it held uses this).

        With stream management every stanza is counted and queued until acknowledged (XEP-0198 §4); a
        detached session only queues.
        """
        if self.closed:
            return
        self.server.metrics.stanza_sent(element.tag)
        sm = self.sm
        if sm is not None and is_stanza(element):
            sm.sent(element)
            settings = self.server.config.stream_management
            if len(sm.unacked) > settings.max_unacked:
                self._end_soon(
                    StreamError(
                        "policy-violation",
                        f"more than {settings.max_unacked} stanzas unacknowledged (XEP-0198 §4)",
                    )
                )
            self.transport.send(element)
            if self.state is State.ESTABLISHED and sm.request_due(settings.ack_request_every):
                self.transport.send(ack_request())
        else:
            self.transport.send(element)
        self.last_write = time.monotonic()

    def _end_soon(self, error: StreamError) -> None:
        """Close from a synchronous path: the close runs as a server task, once."""
        if not self._ending:
            self._ending = True
            self.server.spawn(self.close(error))

    async def close(self, error: StreamError | None = None) -> None:
        """Close the stream: an error if any, then `</stream:stream>` (RFC 6120 §4.4, §4.9.1.2).

        A resumable session whose client stopped answering (connection-timeout) only loses its connection
        (XEP-0198 §5); a detached session just ends (no resumption).
        """
        if self.closed:
            return
        if error is not None:
            self.log.info("closing with <%s/>: %s", error.condition, error.text)
        if self.state is State.DETACHED:
            await self._finish()
            return
        if error is not None and error.condition == "connection-timeout" and self.resumable:
            self._drop_transport(error)
            await self._detach()
            return
        transport = self.transport
        if error is not None and not self.header_sent:
            transport.open_stream(StreamHeader(from_=self.server.config.server.domain, id=None))
        if self.sm is not None and self.state is State.ESTABLISHED:
            transport.send(ack(self.sm))  # §4 allows unsolicited acks: say what was handled
        transport.close_stream(error)
        await self._finish()
        transport.close()  # after the unbind work: the peer has had time to read the error

    async def connection_lost(self) -> None:
        """The transport is gone (EOF, reset, or after close): a resumable session detaches (XEP-0198 §5),
        any other leaves the session registry.
        """
        if self.resumable:
            await self._detach()
        else:
            await self._finish()

    async def _finish(self) -> None:
        """The session ends: out of the registries; XEP-0198 §4 for what the client never acknowledged,
        then `resource-unbind` (unavailable presence).
        """
        if self.closed:
            return
        was_bound = self.state in (State.ESTABLISHED, State.DETACHED)
        self.state = State.CLOSED
        try:
            if was_bound:
                await self._unbind()
        finally:
            self.server.untrack(self)  # last: shutdown waits for this before closing storage

    async def _unbind(self) -> None:
        self.server.sessions.remove(self)
        if self.sm is not None:
            stanzas = self.sm.take_unacked()
            await self.server.bus.fire("sm-ended", UnackedStanzas(self, stanzas))
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
            sm = self.sm
            if sm is not None and sm.unacked and not sm.ack_requested:
                sm.ack_requested = True
                self.transport.send(ack_request())  # XEP-0198 §4: periodically, while stanzas await an ack
            else:
                self.transport.send_keepalive()
            self.last_write = now

    def _is_ping_reply(self, stanza: etree._Element) -> bool:
        if self._ping_id is None or stanza.get("id") != self._ping_id or stanza.tag != _IQ:
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
    # Stream Management (XEP-0198): enable after binding (§3), resume instead of binding (§5), acks (§4).
    (State.BINDING, "sm-enable"): ClientSession._on_enable_unbound,
    (State.BINDING, "sm-resume"): ClientSession._on_resume,
    (State.ESTABLISHED, "sm-enable"): ClientSession._on_enable,
    (State.ESTABLISHED, "sm-resume"): ClientSession._on_resume_bound,
    (State.ESTABLISHED, "sm-request"): ClientSession._on_request,
    (State.ESTABLISHED, "sm-ack"): ClientSession._on_ack,
}
