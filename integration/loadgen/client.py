"""The load generator's XMPP client, sans-IO: stream → (STARTTLS) → SASL → restart → bind → roster.

Bytes in through `receive_data`, events out; what to write waits in `data_to_send()`. The phases and
what each accepts are the table `_TABLE`; an element a phase does not list ends the stream, naming both.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from integration.loadgen.scram import Mechanism, ScramClient, ScramError, plain_message
from integration.loadgen.xmlsplit import Element, Splitter, StreamClosed, StreamOpened, StreamSyntaxError

SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"


@dataclass(frozen=True, slots=True)
class LoginPlan:
    """Who logs in where, and how far the login goes."""

    domain: str
    username: str
    password: str
    mechanism: Mechanism = "SCRAM-SHA-1"
    starttls: bool = False
    resource: str = "load"
    roster: bool = True  # fetch the roster after binding (RFC 6121 §2.2)
    presence: bool = True  # then send initial presence (RFC 6121 §4.2)


# --- events -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartTls:
    """The server said <proceed/>: upgrade the transport, then call `tls_established()`."""


@dataclass(frozen=True, slots=True)
class LoggedIn:
    jid: str  # the full JID the server bound


@dataclass(frozen=True, slots=True)
class Stanza:
    name: bytes  # b"message", b"presence" or b"iq"
    raw: bytes


@dataclass(frozen=True, slots=True)
class Ended:
    """The stream is over: closed cleanly (reason None) or failed, with whose fault it was."""

    reason: str | None = None
    fault: Literal["server", "client", "network"] | None = None


ClientEvent = StartTls | LoggedIn | Stanza | Ended


class Phase(Enum):
    HEADER = "waiting for the stream header"
    FEATURES = "waiting for stream features"
    PROCEED = "waiting for <proceed/>"
    TLS = "upgrading to TLS"
    SASL = "authenticating"
    BIND = "binding a resource"
    SESSION = "establishing the session"
    ROSTER = "fetching the roster"
    ESTABLISHED = "established"
    CLOSING = "closing"
    ENDED = "ended"


class ProtocolFailure(Exception):
    def __init__(self, reason: str, fault: Literal["server", "client"] = "server") -> None:
        super().__init__(reason)
        self.reason = reason
        self.fault = fault


# --- what we look for inside one element ---------------------------------------------------------------

_STARTTLS = re.compile(rb"<starttls[\s/>]")
_MECHANISM = re.compile(rb"<mechanism>\s*([^<\s]+)\s*</mechanism>")
_BIND = re.compile(rb"<bind[\s/>]")
_SESSION = re.compile(rb"<session\b[^>]*?(?:/>|>(.*?)</session>)", re.DOTALL)
_TEXT = re.compile(rb">([^<]*)<")
_CONDITION = re.compile(rb"<(?:failure|stream:error)\b[^>]*>\s*<([a-z-]+)")
_ID = re.compile(rb"""\sid=(?:'([^']*)'|"([^"]*)")""")
_TYPE = re.compile(rb"""\stype=(?:'([^']*)'|"([^"]*)")""")
_FROM = re.compile(rb"""\sfrom=(?:'([^']*)'|"([^"]*)")""")
_JID = re.compile(rb"<jid>([^<]+)</jid>")
_PING = re.compile(rb"<ping\s+xmlns=['\"]urn:xmpp:ping['\"]")
_ROSTER_PUSH = re.compile(rb"<query\s+xmlns=['\"]jabber:iq:roster['\"]")


def attribute(pattern: re.Pattern[bytes], raw: bytes) -> bytes | None:
    """The value of the first id/type/from attribute in `raw` (the element's own comes first)."""
    head = raw[: raw.find(b">") + 1]
    match = pattern.search(head)
    if match is None:
        return None
    value: bytes = match.group(1) if match.group(1) is not None else match.group(2)
    return value


def _text(raw: bytes) -> bytes:
    match = _TEXT.search(raw)
    return match.group(1).strip() if match else b""


def _b64decode(text: bytes) -> bytes:
    if text in (b"", b"="):
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ProtocolFailure("SASL data from the server is not base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode() if data else "="


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")


class Client:
    """One client stream. Call `start()`, then `receive_data()` with every chunk the socket reads."""

    def __init__(self, plan: LoginPlan) -> None:
        self.plan = plan
        self.phase = Phase.HEADER
        self.jid: str | None = None
        self.tls = False
        self._splitter = Splitter()
        self._out: list[bytes] = []
        self._events: list[ClientEvent] = []
        self._authenticated = False
        self._scram: ScramClient | None = None
        self._scram_verified = False
        self._session_needed = False

    # --- input ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the stream (RFC 6120 §4.2)."""
        self._out.append(self._header())

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        """Feed bytes read from the socket; returns what happened (stanzas, login, end of stream)."""
        if self.phase is Phase.ENDED:
            return []
        events = self._events
        self._events = []
        try:
            for item in self._splitter.feed(data):
                if self.phase is Phase.ENDED:
                    break
                if type(item) is Element:
                    if item.name in _PASSTHROUGH and self.phase is Phase.ESTABLISHED:
                        self._established(item)  # the hot path: no table lookup
                    else:
                        self._element(item)
                elif type(item) is StreamOpened:
                    if self.phase is not Phase.HEADER:
                        raise ProtocolFailure(f"a second stream header while {self.phase.value}")
                    self.phase = Phase.FEATURES
                elif type(item) is StreamClosed:
                    if self.phase is not Phase.CLOSING:
                        self._out.append(b"</stream:stream>")
                    reason = (
                        None
                        if self.phase in (Phase.ESTABLISHED, Phase.CLOSING)
                        else (f"server closed the stream while {self.phase.value}")
                    )
                    self._end(reason, "server" if reason else None)
        except ProtocolFailure as failure:
            if failure.fault == "server":
                self._out.append(b"</stream:stream>")
            self._end(failure.reason, failure.fault)
        except StreamSyntaxError as error:
            self._end(f"not XML: {error}", "server")
        events.extend(self._events)
        self._events = []
        return events

    def tls_established(self) -> None:
        """The transport now speaks TLS: restart the stream (RFC 6120 §5.4.3.3)."""
        if self.phase is not Phase.TLS:
            raise ProtocolFailure(f"TLS established while {self.phase.value}", "client")
        self.tls = True
        self._restart()

    def connection_lost(self, error: str | None) -> list[ClientEvent]:
        if self.phase is Phase.ENDED:
            return []
        clean = self.phase is Phase.CLOSING and error is None
        self._end(
            None if clean else f"connection lost while {self.phase.value}: {error or 'EOF'}",
            None if clean else "network",
        )
        events, self._events = self._events, []
        return events

    # --- output -----------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def send(self, stanza: bytes) -> None:
        """Queue a stanza of the caller's (established streams only)."""
        if self.phase is not Phase.ESTABLISHED:
            raise ProtocolFailure(f"cannot send a stanza while {self.phase.value}", "client")
        self._out.append(stanza)

    def close(self) -> None:
        """Close the stream (RFC 6120 §4.4); the server's </stream:stream> ends it."""
        if self.phase not in (Phase.ENDED, Phase.CLOSING):
            self._out.append(b"</stream:stream>")
            self.phase = Phase.CLOSING

    # --- transitions ------------------------------------------------------------------------------

    def _element(self, element: Element) -> None:
        if element.name == b"stream:error":
            match = _CONDITION.search(element.raw)
            condition = match.group(1).decode() if match else "undefined-condition"
            raise ProtocolFailure(f"stream error <{condition}/> while {self.phase.value}")
        handler = _TABLE.get((self.phase, element.name))
        if handler is None:
            if self.phase in _STANZA_PHASES and element.name in _PASSTHROUGH:
                self._established(element)
                return
            raise ProtocolFailure(
                f"unexpected <{element.name.decode(errors='replace')}> while {self.phase.value}"
            )
        handler(self, element)

    def _features(self, element: Element) -> None:
        raw = element.raw
        if self._authenticated:
            if not _BIND.search(raw):
                raise ProtocolFailure("no resource binding offered after authentication")
            resource = _xml_escape(self.plan.resource)
            self._out.append(
                b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>"
                + resource.encode()
                + b"</resource></bind></iq>"
            )
            session = _SESSION.search(raw)
            # RFC 3921 §3 session establishment: needed only when the server does not mark it optional.
            self._session_needed = session is not None and b"<optional" not in (session.group(1) or b"")
            self.phase = Phase.BIND
            return
        if self.plan.starttls and not self.tls:
            if not _STARTTLS.search(raw):
                raise ProtocolFailure("STARTTLS wanted but not offered")
            self._out.append(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            self.phase = Phase.PROCEED
            return
        offered = {m.decode() for m in _MECHANISM.findall(raw)}
        mechanism = self.plan.mechanism
        if mechanism not in offered:
            raise ProtocolFailure(
                f"{mechanism} not offered (offered: {', '.join(sorted(offered)) or 'none'})"
            )
        if mechanism == "PLAIN":
            initial = plain_message(self.plan.username, self.plan.password)
        else:
            hash_name: Literal["SHA-1", "SHA-256"] = "SHA-1" if mechanism == "SCRAM-SHA-1" else "SHA-256"
            self._scram = ScramClient(hash_name, self.plan.username, self.plan.password)
            initial = self._scram.client_first()
        self._out.append(f"<auth xmlns='{SASL_NS}' mechanism='{mechanism}'>{_b64(initial)}</auth>".encode())
        self.phase = Phase.SASL

    def _proceed(self, _element: Element) -> None:
        self.phase = Phase.TLS
        self._events.append(StartTls())

    def _challenge(self, element: Element) -> None:
        data = _b64decode(_text(element.raw))
        if self._scram is None:
            raise ProtocolFailure("a SASL challenge for PLAIN")
        try:
            if data.startswith(b"v="):  # server-final sent as a challenge (RFC 6120 §6.4.6 allows it)
                self._scram.verify(data)
                self._scram_verified = True
                response = b""
            else:
                response = self._scram.client_final(data)
        except ScramError as error:
            raise ProtocolFailure(f"SCRAM: {error}") from None
        self._out.append(f"<response xmlns='{SASL_NS}'>{_b64(response)}</response>".encode())

    def _success(self, element: Element) -> None:
        if self._scram is not None and not self._scram_verified:
            try:
                self._scram.verify(_b64decode(_text(element.raw)))
            except ScramError as error:
                raise ProtocolFailure(f"SCRAM: {error}") from None
        self._authenticated = True
        self._restart()

    def _failure(self, element: Element) -> None:
        match = _CONDITION.search(element.raw)
        condition = match.group(1).decode() if match else "unknown"
        raise ProtocolFailure(f"authentication failed: <{condition}/>")

    def _iq_result(self, element: Element) -> None:
        raw = element.raw
        stanza_id = attribute(_ID, raw)
        if stanza_id not in _OWN_IDS:
            self._established(element)  # an iq of someone else's (a roster push, a ping): answer it
            return
        if attribute(_TYPE, raw) != b"result":
            match = re.search(rb"<error\b.*?<([a-z-]+)", raw, re.DOTALL)
            condition = match.group(1).decode() if match else "unknown"
            raise ProtocolFailure(f"<{condition}/> while {self.phase.value}")
        if self.phase is Phase.BIND:
            match = _JID.search(raw)
            if match is None or stanza_id != b"bind":
                raise ProtocolFailure("bind result without a JID")
            self.jid = match.group(1).decode()
            if self._session_needed:
                self._out.append(
                    b"<iq type='set' id='session'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"
                )
                self.phase = Phase.SESSION
                return
        elif self.phase is Phase.SESSION and stanza_id != b"session":
            raise ProtocolFailure("unexpected iq result while establishing the session")
        elif self.phase is Phase.ROSTER:
            self._logged_in()
            return
        if self.plan.roster:
            self._out.append(b"<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
            self.phase = Phase.ROSTER
        else:
            self._logged_in()

    def _logged_in(self) -> None:
        if self.plan.presence:
            self._out.append(b"<presence/>")
        self.phase = Phase.ESTABLISHED
        assert self.jid is not None
        self._events.append(LoggedIn(self.jid))

    def _established(self, element: Element) -> None:
        if element.name == b"iq":
            self._answer_iq(element.raw)
            return
        self._events.append(Stanza(element.name, element.raw))

    def _answer_iq(self, raw: bytes) -> None:
        kind = attribute(_TYPE, raw)
        if kind not in (b"get", b"set"):
            self._events.append(Stanza(b"iq", raw))
            return
        stanza_id = (attribute(_ID, raw) or b"").decode(errors="replace")
        sender = attribute(_FROM, raw)
        to = b" to='" + sender + b"'" if sender else b""
        # RFC 6120 §8.2.3: every get/set gets an answer; ping (XEP-0199) and roster pushes (RFC 6121
        # §2.1.6) a result, anything else <service-unavailable/>.
        if _PING.search(raw) or (kind == b"set" and _ROSTER_PUSH.search(raw)):
            self._out.append(b"<iq type='result' id='" + _xml_escape(stanza_id).encode() + b"'" + to + b"/>")
        else:
            self._out.append(
                b"<iq type='error' id='"
                + _xml_escape(stanza_id).encode()
                + b"'"
                + to
                + b"><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                b"</error></iq>"
            )

    def _restart(self) -> None:
        self._splitter.reset()
        self._out.append(self._header())
        self.phase = Phase.HEADER

    def _header(self) -> bytes:
        return (
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            f"xmlns:stream='http://etherx.jabber.org/streams' to='{_xml_escape(self.plan.domain)}' "
            "version='1.0'>"
        ).encode()

    def _end(self, reason: str | None, fault: Literal["server", "client", "network"] | None) -> None:
        self.phase = Phase.ENDED
        self._events.append(Ended(reason, fault))


_PASSTHROUGH = frozenset((b"message", b"presence", b"iq"))
_STANZA_PHASES = frozenset((Phase.BIND, Phase.SESSION, Phase.ROSTER, Phase.ESTABLISHED, Phase.CLOSING))
_OWN_IDS = frozenset((b"bind", b"session", b"roster"))

# The transition table: (phase, element) → handler. Anything else is a protocol failure naming both,
# except stanzas, which every phase from binding on hands to the caller.
_TABLE: dict[tuple[Phase, bytes], Callable[[Client, Element], None]] = {
    (Phase.FEATURES, b"stream:features"): Client._features,
    (Phase.PROCEED, b"proceed"): Client._proceed,
    (Phase.SASL, b"challenge"): Client._challenge,
    (Phase.SASL, b"success"): Client._success,
    (Phase.SASL, b"failure"): Client._failure,
    (Phase.BIND, b"iq"): Client._iq_result,
    (Phase.SESSION, b"iq"): Client._iq_result,
    (Phase.ROSTER, b"iq"): Client._iq_result,
}
