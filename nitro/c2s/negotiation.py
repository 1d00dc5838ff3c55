"""A client stream before it is bound (RFC 6120 §4 to §7): header, features, STARTTLS, SASL, bind or resume.

One transition table, `(state, input) → (action, next state)`; an input the table does not name is a stream
error naming both. The stream owns no socket: events come from its `Transport` and elements go back to it.
Binding creates the `ClientSession` other users reach; resuming (XEP-0198 §5) attaches an older one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from lxml import etree

from nitro.c2s.authn import Authenticator, Challenge, mechanisms
from nitro.c2s.inputs import State, input_name
from nitro.c2s.negotiation_xml import (
    binding_features,
    bound_jid,
    domain_of,
    iq_payload,
    negotiation_features,
    sasl_element,
)
from nitro.c2s.session import ClientSession
from nitro.c2s.transport import StreamHeader, Transport
from nitro.core.logins import Turn
from nitro.core.module import ResumeRequest, StreamFeaturesEvent, UnauthenticatedIq
from nitro.core.slots import SlotValues
from nitro.observe.logs import SessionLog, enter_session
from nitro.storage.errors import StorageUnavailable
from nitro.xmpp import ns
from nitro.xmpp.errors import StanzaError, StreamError, error_reply
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.sasl import SaslFailure, b64decode_strict, b64encode
from nitro.xmpp.sm import failed, parse_h
from nitro.xmpp.xmlstream import StreamClosed, StreamEvent, StreamOpened

if TYPE_CHECKING:
    from nitro.core.context import Core

log = logging.getLogger("nitro.c2s.stream")
_stream_ids = itertools.count(1)


class Negotiation:
    """One connection's stream until a resource is bound (then `bound` is the session it drives)."""

    def __init__(self, server: Core, transport: Transport) -> None:
        self.server = server
        self.transport = transport
        self.id = f"c2s{next(_stream_ids)}-{secrets.token_hex(4)}"
        self.log = SessionLog(log, {"session": self.id})
        enter_session(self.log)  # made in the connection's own task: its log lines name this stream
        server.metrics.connection_opened()
        self.config = server.config.c2s
        self.domain = server.config.server.domain
        self.state = State.WAIT_HEADER
        self.lang = "en"
        self.stream_id = ""
        self.header_sent = False
        self.authenticated = False
        self.username: str | None = None
        self.mechanism: str | None = None  # the SASL mechanism that authenticated the stream
        self.jid = JID(None, self.domain, None)  # the domain, then the user's bare JID
        self.slots = SlotValues(self)  # module state of an unbound stream (in-band registration)
        self.bound: ClientSession | None = None  # the session bound or resumed on this stream
        self.closed_with: str | None = None  # the stream error this stream was closed with, for the log
        self._auth: Authenticator | None = None
        self._auth_failures = 0
        self._turn: Turn | None = None  # one of the account's login turns (nitro/core/logins.py)
        self.yield_slot: Callable[[], None] = lambda: None  # gives up the server-wide negotiation slot
        self.negotiation_deadline = time.monotonic() + self.config.negotiation_timeout

    def __repr__(self) -> str:
        return f"<Negotiation {self.id} {self.jid} {self.state.value}>"

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def detached(self) -> bool:
        return False

    # -- input ------------------------------------------------------------------------------------

    async def receive(self, event: StreamEvent) -> None:
        """One event from the transport; raises StreamError for the connection to close with."""
        if self.closed:
            return
        if isinstance(event, StreamOpened):
            if self.state is not State.WAIT_HEADER:
                raise StreamError("invalid-xml", "unexpected stream header")
            await self._on_header(event)
            return
        if isinstance(event, StreamClosed):
            await self.close()
            return
        element = event.element
        self.server.metrics.stanza_received(element.tag)
        name = input_name(element)
        row = _TRANSITIONS.get((self.state, name))
        if row is None:
            raise self._unexpected(name if name != "nonza" else etree.QName(element).localname)
        action, next_state = row
        if await action(self, element):
            self.state = next_state

    def _unexpected(self, what: str) -> StreamError:
        if not self.authenticated and self.state is not State.WAIT_HEADER:
            return StreamError("not-authorized", f"{what} is not allowed before authentication")
        return StreamError("policy-violation", f"{what} is not allowed in state {self.state.value}")

    def send(self, element: etree._Element) -> None:
        if not self.closed:
            self.transport.send(element)

    # -- header and features (RFC 6120 §4.7, §4.3.2) ------------------------------------------------

    async def _on_header(self, opened: StreamOpened) -> None:
        self.lang = opened.lang or self.lang
        self.stream_id = secrets.token_hex(8)
        header = StreamHeader(from_=self.domain, to=opened.from_, id=self.stream_id, lang=self.lang)
        self.transport.open_stream(header)
        self.header_sent = True
        if opened.to is None or domain_of(opened.to) != self.domain:
            raise StreamError("host-unknown", f"this server serves {self.domain}")
        if opened.version is None or not opened.version.startswith("1."):
            raise StreamError("unsupported-version", "XMPP 1.0 streams only (RFC 6120 §4.7.5)")
        self.state = State.NEGOTIATING if not self.authenticated else State.BINDING
        self.send(await self._features())

    async def _features(self) -> etree._Element:
        if self.authenticated:
            features = binding_features()
        else:
            starttls = self.server.tls_context is not None and self.transport.can_starttls
            if not starttls and not self.may_negotiate:
                # Encryption is required and this transport cannot add it (WebSocket or BOSH over plain HTTP
                # from afar, RFC 7395 §3.9): no feature would lead anywhere, so say why now, as Prosody does
                # (it closes such a stream when it has no feature to offer).
                raise StreamError("policy-violation", "encryption is required: connect over TLS (https, wss)")
            required = starttls and self.config.require_encryption
            features = negotiation_features(
                starttls=starttls, tls_required=required, mechanisms=self._mechanisms()
            )
            if required:
                return features  # nothing else until TLS is up (RFC 6120 §5.3.1)
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

    # -- STARTTLS (§5) and restarts --------------------------------------------------------------------

    async def _on_starttls(self, _element: etree._Element) -> bool:
        if not self.transport.can_starttls or self.server.tls_context is None:
            # §5.4.2.2: STARTTLS that was not offered is the failure case: <failure/>, then the stream closes
            # (no stream error; Prosody and ejabberd do the same)
            self.log.info("STARTTLS asked for but not offered on this stream")
            self.send(etree.Element(f"{{{ns.TLS}}}failure", nsmap=ns.default_ns(ns.TLS)))
            await self.close()
            return False
        self.send(etree.Element(f"{{{ns.TLS}}}proceed", nsmap=ns.default_ns(ns.TLS)))
        await self.transport.start_tls()
        self._restart()  # §5.4.3.3: a fresh stream over TLS
        return True

    def _restart(self) -> None:
        """The stream restarts: until the client's new header is answered, ours is not sent (an error before
        it must still come with a header, §4.9.1.2)."""
        self.transport.restart()
        self.header_sent = False

    # -- SASL (§6) -------------------------------------------------------------------------------------

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
        self._auth = Authenticator(mechanism, self.server.storage.accounts, self.domain, self._take_turn)
        self.state = State.SASL
        await self._sasl_step(element)
        return False  # _sasl_step moved the state on (SASL, a restart, or back to NEGOTIATING)

    async def _take_turn(self, username: str) -> None:
        """Wait, unread, for a login turn of the account (bounded by the negotiation deadline)."""
        if not self.server.account_logins.busy(username):  # a turn is free: no wait, so no timer (~5 µs)
            self._turn = await self.server.account_logins.enter(username)
            return
        self.yield_slot()  # waiting for this account's turn, not for the server's
        try:
            async with asyncio.timeout(max(0.0, self.negotiation_deadline - time.monotonic())):
                self._turn = await self.server.account_logins.enter(username)
        except TimeoutError:
            raise StreamError("connection-timeout", "stream negotiation took too long") from None

    def _leave_turn(self) -> None:
        if self._turn is not None:
            self._turn.leave()

    async def _on_response(self, element: etree._Element) -> bool:
        await self._sasl_step(element)
        return False

    async def _on_abort(self, _element: etree._Element) -> bool:
        self._auth = None
        self._leave_turn()
        self.send(sasl_element("failure", condition="aborted"))
        return True

    async def _sasl_step(self, element: etree._Element) -> None:
        assert self._auth is not None
        text = (element.text or "").strip()
        try:
            step = await self._auth.step(b64decode_strict(text) if text else None)
        except SaslFailure as failure:
            self._sasl_failure(failure)
            return
        except StorageUnavailable:
            self._sasl_failure(SaslFailure("temporary-auth-failure", "account store unavailable"))
            return
        if isinstance(step, Challenge):
            self.send(sasl_element("challenge", b64encode(step.data)))
            return
        self.username = step.username
        self.mechanism = self._auth.mechanism
        self.authenticated = True
        self._auth = None
        self.jid = JID.make(step.username, self.domain)
        self.log.extra = {"session": self.id, "jid": self.jid}
        self.log.info("authenticated as %s", self.jid)
        self.send(sasl_element("success", None if step.data is None else b64encode(step.data)))
        self._restart()  # §6.4.6: the client opens a new stream
        self.state = State.WAIT_HEADER

    def _sasl_failure(self, failure: SaslFailure) -> None:
        self._auth = None
        self._leave_turn()
        self.state = State.NEGOTIATING
        self.send(sasl_element("failure", condition=failure.condition, reason=failure.text))
        if failure.condition in ("not-authorized", "invalid-authzid"):
            self.server.auth_throttle.record_failure(self.transport.peer_host)
            self._auth_failures += 1
            self.log.info("failed login from %s (%s)", self.transport.peer_host, failure.condition)
            if self._auth_failures >= self.server.config.auth.max_failures_per_stream:
                raise StreamError("not-authorized", "too many failed attempts (RFC 6120 §6.4.5)")

    async def _on_unauthenticated_iq(self, element: etree._Element) -> bool:
        """Before login only in-band registration (XEP-0077) may be spoken, and only when TLS allows."""
        payload = iq_payload(element)
        if not self.may_negotiate or element.tag != f"{{{ns.CLIENT}}}iq" or payload is None:
            raise self._unexpected(etree.QName(element).localname)
        name = f"c2s-unauthenticated/iq-{element.get('type')}/{payload.namespace}:{payload.localname}"
        try:
            handled = await self.server.bus.fire(name, UnauthenticatedIq(self, element))
        except StanzaError as error:
            self.send(error_reply(element, error))
            return False
        if not handled:
            raise self._unexpected(f"iq {payload.namespace}")
        return False

    # -- bind (§7) or resume (XEP-0198 §5) -------------------------------------------------------------

    async def _on_bind(self, iq: etree._Element) -> bool:
        """Resource binding (RFC 6120 §7): the server picks a resource if the client names none."""
        assert self.username is not None
        try:
            jid = bound_jid(self.username, self.domain, iq)
        except InvalidJID as exc:
            self.send(error_reply(iq, StanzaError("bad-request", f"resource not allowed: {exc}")))
            return False
        bound = self.server.sessions.resources(jid.bare)
        limit = self.config.max_resources_per_account
        if len(bound) >= limit and all(resource.jid != jid for resource in bound):
            self._leave_turn()
            self.log.info("bind refused: %d resources bound already", len(bound))
            error = StanzaError("resource-constraint", f"at most {limit} resources per account", type="wait")
            self.send(error_reply(iq, error))  # RFC 6120 §7.6.2.1; the client may retry later
            return False
        session = ClientSession(
            self.server,
            self.transport,
            jid,
            stream_id=self.stream_id,
            lang=self.lang,
            mechanism=self.mechanism,
        )
        session.id = self.id
        enter_session(session)  # the connection's task now logs for the session (not this negotiation's log)
        self._hand_over(session)
        await session.bind(iq)
        self._leave_turn()
        return True

    async def _on_unbound_stanza(self, stanza: etree._Element) -> bool:
        """§7.1: stanzas flow once a resource is bound. Before, an error reply (none to a result or an error,
        §8.3.1) and the stream goes on to bind, as Prosody and ejabberd answer."""
        if stanza.get("type") not in ("result", "error"):
            self.send(error_reply(stanza, StanzaError("not-authorized", "bind a resource first")))
        return False

    async def _on_enable_unbound(self, _element: etree._Element) -> bool:
        """§3: a client enables stream management after resource binding, never before."""
        self.send(failed("unexpected-request", "bind a resource first, or resume"))
        return False

    async def _on_resume(self, element: etree._Element) -> bool:
        """§5: an authenticated stream takes over a session of the same user instead of binding."""
        previd = element.get("previd") or ""
        h = parse_h(element.get("h"))
        request = ResumeRequest(previd, self.jid)
        self._leave_turn()
        await self.server.bus.fire("sm-resume", request)
        old = request.found
        if not isinstance(old, ClientSession) or not old.resumable_by(previd, self.jid):
            self.log.info("no session to resume for the id given")
            self.send(failed("item-not-found", "unknown or expired session id"))
            return False  # still BINDING: the client may bind a new session
        # raises (an impossible 'h') before anything changed; this stream then closes with the error
        await old.resume(
            self.transport, h, stream_id=self.stream_id, lang=self.lang, mechanism=self.mechanism
        )
        self._hand_over(old)
        return True

    def _hand_over(self, session: ClientSession) -> None:
        """From now on this connection drives `session`; this negotiation is over."""
        self.bound = session
        self.server.untrack(self)

    # -- end and timer ---------------------------------------------------------------------------------

    async def close(self, error: StreamError | None = None) -> None:
        """Close the stream: an error if any, then the stream close (RFC 6120 §4.4, §4.9.1.2)."""
        if self.closed:
            return
        if error is not None:
            self.closed_with = error.described  # not the exception: its traceback
            self.log.info("closing with <%s/>: %s", error.condition, error.text)
            if not self.header_sent:
                self.transport.open_stream(StreamHeader(from_=self.domain, id=None))
        self.state = State.CLOSED
        self._leave_turn()
        self.server.untrack(self)
        self.transport.close_stream(error)

    async def connection_lost(self) -> None:
        self.state = State.CLOSED
        self._leave_turn()
        self.server.untrack(self)

    def next_deadline(self) -> float:
        return self.negotiation_deadline

    async def on_timer(self) -> None:
        if time.monotonic() >= self.negotiation_deadline:
            raise StreamError("connection-timeout", "stream negotiation took too long")


_Action = Callable[[Negotiation, etree._Element], Awaitable[bool]]


# Every (state, input) a stream accepts before binding, with its action and the state entered when the
# action returns True (an action may also move the state itself); anything else is a stream error.
_TRANSITIONS: dict[tuple[State, str], tuple[_Action, State]] = {
    (State.NEGOTIATING, "starttls"): (Negotiation._on_starttls, State.WAIT_HEADER),
    (State.NEGOTIATING, "auth"): (Negotiation._on_auth, State.SASL),
    (State.NEGOTIATING, "stanza"): (Negotiation._on_unauthenticated_iq, State.NEGOTIATING),
    (State.SASL, "response"): (Negotiation._on_response, State.SASL),
    (State.SASL, "abort"): (Negotiation._on_abort, State.NEGOTIATING),
    (State.BINDING, "bind"): (Negotiation._on_bind, State.ESTABLISHED),
    (State.BINDING, "stanza"): (Negotiation._on_unbound_stanza, State.BINDING),
    # Stream Management (XEP-0198): enable only after binding (§3); resume instead of binding (§5).
    (State.BINDING, "sm-enable"): (Negotiation._on_enable_unbound, State.BINDING),
    (State.BINDING, "sm-resume"): (Negotiation._on_resume, State.ESTABLISHED),
}
