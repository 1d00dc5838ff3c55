"""One BOSH session, sans-IO (XEP-0124 + XEP-0206): request bodies in, stream events and HTTP replies out.

The caller hands each request over with a handle of its own, delivers the returned stream events to the XMPP
stream, queues what the stream sends with `send`, and calls `flush` to learn which held requests to answer
now and with what. Time is a value passed in (time.monotonic() in production, a number in tests).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from nitro.xmpp import ns
from nitro.xmpp.bosh import (
    BOSH_VERSION,
    LEGACY_STATUS,
    XBOSH,
    Body,
    BoshError,
    Condition,
    body,
    parse_version,
    terminal,
)
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.xmlstream import StanzaReceived, StreamClosed, StreamEvent, StreamOpened

_XML_LANG: Final = f"{{{ns.XML}}}lang"


@dataclass(frozen=True, slots=True)
class Settings:
    """Our side of the session's parameters (config [bosh]); the client's requests are capped by them."""

    max_wait: int = 60
    max_hold: int = 1
    inactivity: int = 60
    polling: int = 2
    max_pause: int = 300


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the request `handle` with `body` (HTTP `status`: 200, or 400/403/404 for a legacy client)."""

    handle: int
    body: bytes
    status: int = 200


@dataclass(slots=True)
class _Held:
    handle: int
    rid: int
    due: float  # answered empty at this time (the session's 'wait')
    pause: bool = False


@dataclass(slots=True)
class _Pending:
    handle: int
    body: Body


@dataclass(slots=True)
class _Terminal:
    condition: Condition | None
    data: bytes
    delivered: bool = False
    legacy_status: int = 200


@dataclass(slots=True)
class _Acks:
    """XEP-0124 §9: the client asked for acknowledgements in its session creation request."""

    enabled: bool = False
    report: tuple[int, float] | None = None  # (rid whose response the client missed, when we sent it)
    sent_at: dict[int, float] = field(default_factory=dict)


class BoshSession:
    """The binding state of one session: rid window, held requests, response buffer, inactivity, pause."""

    def __init__(self, sid: str, creation: Body, settings: Settings, domain: str, now: float) -> None:
        """Check the session creation request (XEP-0124 §7.1, XEP-0206 §4); raises BoshError."""
        to = creation.get("to")
        if not to:
            raise BoshError("improper-addressing", "the session creation request needs 'to'")
        try:
            target = JID.parse(to)
        except InvalidJID:
            target = None
        if target is None or target.domain != domain or target.local or target.resource:
            raise BoshError("host-unknown", f"this server serves {domain}")
        wait = creation.number("wait")
        hold = creation.number("hold")
        client_ver = parse_version(creation.get("ver"))
        self.sid = sid
        self.legacy = client_ver is None  # §17.1: HTTP error codes instead of binding conditions
        self.version = min(client_ver, BOSH_VERSION) if client_ver is not None else BOSH_VERSION
        self.wait = min(settings.max_wait if wait is None else wait, settings.max_wait)
        self.hold = min(1 if hold is None else hold, settings.max_hold)
        self.requests = max(self.hold + 1, 2)  # §7.2 recommends hold + 1, or 2
        self.settings = settings
        self.domain = domain
        self.opened = StreamOpened(
            to=to,
            from_=creation.get("from"),
            version=creation.get(f"{{{XBOSH}}}version") or "1.0",  # XEP-0206 §4
            lang=creation.get(_XML_LANG),
            id=None,
            content_ns=ns.CLIENT,
        )
        self._next_rid = creation.rid  # the next rid to process, in order (§14.2)
        self.rids_unknown = False  # taken back from a dead successor: it may have handled rids we never saw
        self._pending: dict[int, _Pending] = {}  # received ahead of a gap in the rids
        self._held: list[_Held] = []  # processed and waiting for something to answer, in rid order
        self._outbox: list[bytes] = []
        self._cache: OrderedDict[int, bytes] = OrderedDict()  # §14.3: responses to resend
        self._replies: list[Reply] = []
        self._terminal: _Terminal | None = None
        # §7.2 and XEP-0206 §4: what the first response carries
        self._creation_attrs: list[tuple[str, str]] | None = [
            ("sid", sid),
            ("wait", str(self.wait)),
            ("requests", str(self.requests)),
            ("hold", str(self.hold)),
            ("inactivity", str(settings.inactivity)),
            ("polling", str(settings.polling)),
            ("maxpause", str(settings.max_pause)),
            ("ver", f"{self.version[0]}.{self.version[1]}"),
            ("from", domain),
            ("secure", "true"),  # we are the XMPP server: nothing insecure lies behind us
            ("xmpp:version", "1.0"),
            ("xmpp:restartlogic", "true"),
            ("xmlns:xmpp", XBOSH),
            *([("ack", str(creation.rid))] if creation.get("ack") is not None else []),
        ]
        self._authid = ""
        self._restart_expected = False
        self._acks = _Acks(enabled=creation.get("ack") is not None)
        self._last_response = now
        self._inactivity = float(settings.inactivity)  # until the next request, after a pause (§10)
        self._idle_poll: float | None = None  # polling sessions: when the last empty poll came (§12)
        self.processing = False  # a request's events are being delivered: answers wait until it is done

    # -- requests in -------------------------------------------------------------------------------

    def create(self, handle: int, creation: Body, now: float) -> list[StreamEvent]:
        """Accept the session creation request itself: the stream opens, then its payloads if any."""
        self._next_rid = creation.rid + 1
        try:
            return self._accept(handle, creation, now, opening=True)
        except BoshError as error:
            self._fail(error.condition)
            return []

    def receive(self, handle: int, request: Body, now: float) -> list[StreamEvent]:
        """A request for this session, in any order: the stream events it releases, in rid order."""
        if self._terminal is not None:
            self._answer_terminal(handle)
            return []
        self._inactivity = float(self.settings.inactivity)
        rid = request.rid
        if self.rids_unknown and not self._pending and not self._held:
            # Taken back after the successor died (an upgrade): it answered up to rid-1, which we never saw;
            # the client's next request continues from there, not from our older window.
            self.rids_unknown = False
            self._next_rid = max(self._next_rid, rid)
        if rid < self._next_rid:  # §14.3: a request sent again
            self._repeat(handle, rid)
            return []
        if rid - self._next_rid >= self.requests:  # §14.2: beyond the window
            self._fail("item-not-found", handle)
            return []
        replaced = self._pending.get(rid)
        if replaced is not None:  # the same request again before its gap filled: answer the newer one
            self._reply(replaced.handle, body())
        elif len(self._held) + len(self._pending) + 1 > self.requests and not (
            request.terminate or request.number("pause") is not None
        ):
            self._fail("policy-violation", handle)  # §11: too many simultaneous requests
            return []
        self._pending[rid] = _Pending(handle, request)
        return self._drain(now)

    def _drain(self, now: float) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        while self._terminal is None and (ready := self._pending.pop(self._next_rid, None)) is not None:
            self._next_rid += 1
            try:
                events.extend(self._accept(ready.handle, ready.body, now))
            except BoshError as error:
                self._fail(error.condition)
        return events

    def _accept(self, handle: int, request: Body, now: float, *, opening: bool = False) -> list[StreamEvent]:
        rid = request.rid
        pause = request.number("pause")
        self._held.append(_Held(handle, rid, now + self.wait, pause is not None))
        if self._acks.enabled and not opening:
            self._client_ack(request.number("ack", maximum=2**53), now)
        if pause is not None:  # §10: answer everything now and allow a longer silence once
            self._inactivity = float(min(pause, self.settings.max_pause))
        events: list[StreamEvent] = [self.opened] if opening else []
        if request.restart and not opening:
            if not self._restart_expected:  # XEP-0206 §5: only after SASL success
                raise BoshError("policy-violation", "stream restart before SASL success")
            self._restart_expected = False
            events.append(
                StreamOpened(
                    to=request.get("to") or self.opened.to,
                    from_=self.opened.from_,
                    version=self.opened.version,
                    lang=request.get(_XML_LANG) or self.opened.lang,
                    id=None,
                    content_ns=ns.CLIENT,
                )
            )
        empty = not request.payloads and not events and not request.terminate and pause is None
        if self.hold == 0 and empty:
            if self._idle_poll is not None and now - self._idle_poll < self.settings.polling:
                raise BoshError(
                    "policy-violation", f"polling more often than every {self.settings.polling} s"
                )
            self._idle_poll = now
        elif request.payloads:
            self._idle_poll = None
        events.extend(StanzaReceived(element) for element in request.payloads)
        if request.terminate:
            events.append(StreamClosed())  # §13: the payloads first, then the stream ends
        return events

    def _client_ack(self, ack: int | None, now: float) -> None:
        """§9.2: responses up to `ack` arrived; a lower ack than our last response means one was lost."""
        if ack is None:
            return
        for rid in [rid for rid in self._cache if rid <= ack]:
            del self._cache[rid]
        missed = ack + 1
        sent = self._acks.sent_at.get(missed)
        if sent is not None and missed < self._next_rid - 1:
            self._acks.report = (missed, now - sent)
        for rid in [rid for rid in self._acks.sent_at if rid <= ack]:
            del self._acks.sent_at[rid]

    def _repeat(self, handle: int, rid: int) -> None:
        cached = self._cache.get(rid)
        if cached is not None:
            self._replies.append(Reply(handle, cached))
            return
        for held in self._held:
            if held.rid == rid:  # still held: the new connection takes its place
                self._reply(held.handle, body())
                held.handle = handle
                return
        self._fail("item-not-found", handle)  # §14.3: the response is gone

    # -- the stream's side --------------------------------------------------------------------------

    def stream_opened(self, stream_id: str | None) -> None:
        """Our stream header: its id is the deprecated 'authid' of the creation response (XEP-0206 §4)."""
        if stream_id and not self._authid:
            self._authid = stream_id
            if self._creation_attrs is not None:
                self._creation_attrs.append(("authid", stream_id))

    def expect_restart(self) -> None:
        """The stream restarts (SASL success): the next request may carry xmpp:restart (XEP-0206 §5)."""
        self._restart_expected = True

    def send(self, data: bytes) -> None:
        """Queue one serialised payload for the next response."""
        if self._terminal is None:
            self._outbox.append(data)

    def terminate(self, condition: Condition | None, extra: bytes = b"") -> None:
        """End the session: held requests (or the next one) get a terminal body with what is still queued."""
        if self._terminal is None:
            data = terminal(condition, [*self._outbox, extra] if extra else self._outbox)
            status = LEGACY_STATUS.get(condition or "", 200) if self.legacy else 200
            self._terminal = _Terminal(condition, b"" if status != 200 else data, legacy_status=status)
            self._outbox.clear()

    def _fail(self, condition: Condition, handle: int | None = None) -> None:
        self.terminate(condition)
        if handle is not None:
            self._answer_terminal(handle)

    # -- replies out ---------------------------------------------------------------------------------

    def flush(self, now: float) -> list[Reply]:
        """The requests to answer now: with queued payloads, past `hold`, after `wait`, or terminal."""
        if self._terminal is not None:
            for handle in [held.handle for held in self._held]:
                self._answer_terminal(handle)
            for handle in [pending.handle for pending in self._pending.values()]:
                self._answer_terminal(handle)
            self._held.clear()
            self._pending.clear()
        elif not self.processing:
            if self._outbox and self._held and not self._held[0].pause:
                self._respond(self._held.pop(0), self._outbox, now)
                self._outbox = []
            pausing = any(held.pause for held in self._held)
            while self._held and (len(self._held) > self.hold or pausing or self._held[0].due <= now):
                self._respond(self._held.pop(0), [], now)
        replies, self._replies = self._replies, []
        return replies

    def release(self, now: float) -> None:
        """Answer every held request now, as when 'wait' passes (the session moves to another process)."""
        while self._held:
            self._respond(self._held.pop(0), [], now)

    def _respond(self, held: _Held, payloads: list[bytes], now: float) -> None:
        attrs: list[tuple[str, str]] = []
        if self._creation_attrs is not None:
            attrs, self._creation_attrs = self._creation_attrs, None
        elif self._acks.enabled and self._next_rid - 1 != held.rid:
            attrs.append(("ack", str(self._next_rid - 1)))  # §9.1: the highest rid received in order
        if self._acks.report is not None:
            missed, age = self._acks.report
            attrs += [("report", str(missed)), ("time", str(int(age * 1000)))]
            self._acks.report = None
        data = body(attrs, payloads)
        if not held.pause:  # §14.3: remember it for a resend (never pause responses)
            self._cache[held.rid] = data
            while len(self._cache) > self.requests:
                self._cache.popitem(last=False)
            if self._acks.enabled:
                self._acks.sent_at[held.rid] = now
        if payloads:
            self._idle_poll = None
        self._reply(held.handle, data)
        self._last_response = now

    def _reply(self, handle: int, data: bytes) -> None:
        self._replies.append(Reply(handle, data))

    def _answer_terminal(self, handle: int) -> None:
        terminal = self._terminal
        assert terminal is not None
        terminal.delivered = True
        self._replies.append(Reply(handle, terminal.data, terminal.legacy_status))

    # -- time ------------------------------------------------------------------------------------------

    @property
    def waiting(self) -> bool:
        """Requests are held or buffered (the client is not inactive)."""
        return bool(self._held or self._pending) or self.processing

    def next_deadline(self) -> float:
        """When `flush` may have a held request to answer, or the session becomes inactive."""
        if self._held:
            return min(held.due for held in self._held)
        if self.waiting:
            return float("inf")
        return self._last_response + self._inactivity

    def inactive(self, now: float) -> bool:
        """§10: no request held and none since the last response for longer than 'inactivity' (or a pause)."""
        return not self.waiting and now >= self._last_response + self._inactivity

    @property
    def authid(self) -> str:
        """Our stream's id (the 'authid' of the creation response)."""
        return self._authid

    @property
    def terminated(self) -> bool:
        return self._terminal is not None

    @property
    def terminal_delivered(self) -> bool:
        """The terminal body went out (or there is none): nothing more to say to the client."""
        return self._terminal is not None and self._terminal.delivered

    @property
    def condition(self) -> Condition | None:
        return None if self._terminal is None else self._terminal.condition
