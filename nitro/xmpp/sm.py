"""Stream Management (XEP-0198 v1.6.3) state of one session, sans-IO: counters, the unacknowledged queue and
the resumption token as one serialisable value, plus the nonzas and errors of the protocol.
"""

from __future__ import annotations

import copy
import datetime
import math
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from nitro.xmpp import ns
from nitro.xmpp.errors import StanzaCondition, StreamError
from nitro.xmpp.stanza import add_delay, child, element

SM = "urn:xmpp:sm:3"
MAX_SEQ = 2**32  # §4: 'h' is an xs:unsignedInt and wraps to 0 after 2^32 - 1

_STANZA_NAMES = frozenset({"message", "presence", "iq"})
_STAMPED = frozenset({"message", "presence"})
_DELAY = f"{{{ns.DELAY}}}delay"
# Queued stanzas are wire bytes written inside a jabber:client stream; parsing one back needs that scope.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
_SCOPE_OPEN = b"<stream xmlns='jabber:client'>"
_SCOPE_CLOSE = b"</stream>"


class HandledCountTooHigh(StreamError):
    """§4: the peer acknowledged more stanzas than were sent; `<undefined-condition/>` carries the counts."""

    def __init__(self, h: int, send_count: int) -> None:
        super().__init__(
            "undefined-condition", f"you acknowledged {h} stanzas but only {send_count} were sent"
        )
        self.h = h
        self.send_count = send_count

    def to_element(self) -> etree._Element:
        error = super().to_element()
        child(error, SM, "handled-count-too-high", h=str(self.h), **{"send-count": str(self.send_count)})
        return error


@dataclass(slots=True)
class SmState:
    """What a stream-managed session must carry to continue elsewhere (another connection, later another
    process): the §4 counters and queue, the §5 token, and the session as it was when it lost its connection.

    `unacked` holds the last `len(unacked)` stanzas counted in `h_out`, oldest first, as copies of what was
    sent (a transport of any kind writes them again on resume); `unacked_bytes` is their serialised size,
    measured once when queued, and counts in the process-wide `budget` once the session has joined one.
    The session fields (`jid` to `directed_to`) and `resume_deadline` are filled when the session detaches.
    """

    id: str = ""  # the resumption token (§5 'previd'); empty when the client did not ask to resume
    resume_timeout: float = 0.0  # seconds a detached session waits for `<resume/>`
    h_in: int = 0  # stanzas received from the client and handled, mod 2^32
    h_out: int = 0  # stanzas sent to the client, mod 2^32
    unacked: deque[etree._Element] = field(default_factory=deque)
    ack_requested: bool = False  # an `<r/>` is outstanding: at most one at a time
    jid: str = ""
    priority: int = 0
    presence: bytes | None = None  # the last available presence, self-contained XML
    interested: bool = False
    directed_to: tuple[str, ...] = ()
    resume_deadline: float | None = None  # wall-clock time (time.time()) the resumption window closes
    unacked_sizes: deque[int] = field(default_factory=deque)  # the serialised size of each queued stanza
    unacked_bytes: int = 0
    budget: QueueBudget | None = field(default=None, compare=False, repr=False)
    # told after each change of the counters or the queue (an upgrade journals them to its successor)
    watch: Callable[[], None] | None = field(default=None, compare=False, repr=False)
    # restored from a shadow copy (nitro/ops/shadow_copies.py), which may lag the dead process by a loop turn
    lagging: bool = field(default=False, compare=False, repr=False)

    @classmethod
    def start(cls, *, resume: bool, resume_timeout: float) -> SmState:
        """§3: a fresh state for `<enable/>`; the token is unguessable (it is all a resumption proves)."""
        if not resume:
            return cls()
        return cls(id=secrets.token_urlsafe(24), resume_timeout=resume_timeout)

    @property
    def resumable(self) -> bool:
        return bool(self.id) and self.resume_timeout > 0

    @property
    def max_seconds(self) -> int:
        """The `max` of `<enabled/>`: whole seconds, never 0 (0 would read as "no limit stated")."""
        return max(1, math.ceil(self.resume_timeout))

    @property
    def acked(self) -> int:
        """The 'h' the client last acknowledged (or 0), mod 2^32."""
        return (self.h_out - len(self.unacked)) % MAX_SEQ

    def received(self) -> None:
        """§4: one more inbound stanza handled."""
        self.h_in = (self.h_in + 1) % MAX_SEQ
        if self.watch is not None:
            self.watch()

    def sent(self, stanza: etree._Element, *, delay_from: str | None = None) -> None:
        """§4: one more outbound stanza, kept (as a copy: senders may reuse theirs) until acknowledged.

        With `delay_from`, the kept copy of a message or presence is stamped now (XEP-0203) unless it
        carries a stamp already: resent on resume or stored offline later, it still says when it was sent.
        """
        self.h_out = (self.h_out + 1) % MAX_SEQ
        kept = copy.copy(stanza)
        if delay_from is not None and etree.QName(kept).localname in _STAMPED and kept.find(_DELAY) is None:
            add_delay(kept, datetime.datetime.now(datetime.UTC), delay_from)
        self.unacked.append(kept)
        self._queued(len(etree.tostring(kept)))

    def _queued(self, size: int) -> None:
        self.unacked_sizes.append(size)
        self.unacked_bytes += size
        if self.budget is not None:
            self.budget.changed(self, size)
        if self.watch is not None:
            self.watch()

    def _released(self, count: int) -> None:
        size = 0
        for _ in range(count):
            self.unacked.popleft()
            size += self.unacked_sizes.popleft()
        self.unacked_bytes -= size
        if self.budget is not None and size:
            self.budget.changed(self, -size)
        if self.watch is not None and count:
            self.watch()

    def request_due(self, every: int) -> bool:
        """Whether to send `<r/>` now: `every` stanzas await an ack and no request is outstanding."""
        if self.ack_requested or len(self.unacked) < max(1, every):
            return False
        self.ack_requested = True
        return True

    def acknowledge(self, h: int) -> int:
        """Apply an `<a h/>` (or the 'h' of `<resume/>`): drop what it covers, return how many.

        Nothing changes when it raises: an 'h' above what was sent is HandledCountTooHigh (§4), an 'h' below
        an earlier acknowledgement is a protocol error too (counters never go back).
        """
        acked = self.acked
        newly = (h - acked) % MAX_SEQ
        if newly > len(self.unacked):
            back = (acked - h) % MAX_SEQ
            if back < MAX_SEQ // 2:
                raise StreamError(
                    "undefined-condition", f"acknowledgement went back from {acked} to {h} (XEP-0198 §4)"
                )
            raise HandledCountTooHigh(h, self.h_out)
        self._released(newly)
        self.ack_requested = False
        return newly

    def catch_up(self, h: int, limit: int) -> None:
        """A lagging copy (`lagging`): an 'h' past `h_out` counts stanzas the client got from the process
        that died before its copy heard of them; they were delivered, so the counter moves up to it (by at
        most `limit`, the most a session may have unacknowledged; past it the 'h' is wrong)."""
        ahead = (h - self.h_out) % MAX_SEQ
        if self.lagging and 0 < ahead <= limit:
            self._released(len(self.unacked))
            self.h_out = h
        self.lagging = False

    def take_unacked(self) -> list[etree._Element]:
        """Empty the queue (the session ends without resumption) and return what it held, oldest first; the
        session leaves its budget."""
        stanzas = list(self.unacked)
        self._released(len(stanzas))
        if self.budget is not None:
            self.budget.leave(self)
        return stanzas

    def to_dict(self) -> dict[str, Any]:
        """Simple types only (str, int, float, bool, list, None): JSON can carry it to another process."""
        return {
            "id": self.id,
            "resume_timeout": self.resume_timeout,
            "h_in": self.h_in,
            "h_out": self.h_out,
            "unacked": [etree.tostring(stanza, encoding="unicode") for stanza in self.unacked],
            "ack_requested": self.ack_requested,
            "jid": self.jid,
            "priority": self.priority,
            "presence": None if self.presence is None else self.presence.decode(),
            "interested": self.interested,
            "directed_to": list(self.directed_to),
            "resume_deadline": self.resume_deadline,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SmState:
        presence = data.get("presence")
        deadline = data.get("resume_deadline")
        unacked = [parse_stanza(str(item).encode()) for item in data["unacked"]]
        sizes = [len(etree.tostring(stanza)) for stanza in unacked]
        return cls(
            id=str(data["id"]),
            resume_timeout=float(data["resume_timeout"]),
            h_in=int(data["h_in"]) % MAX_SEQ,
            h_out=int(data["h_out"]) % MAX_SEQ,
            unacked=deque(unacked),
            unacked_sizes=deque(sizes),
            unacked_bytes=sum(sizes),
            ack_requested=bool(data.get("ack_requested", False)),
            jid=str(data.get("jid", "")),
            priority=int(data.get("priority", 0)),
            presence=None if presence is None else str(presence).encode(),
            interested=bool(data.get("interested", False)),
            directed_to=tuple(str(jid) for jid in data.get("directed_to", ())),
            resume_deadline=None if deadline is None else float(deadline),
        )


class QueueBudget:
    """The bytes every stream-managed session of this process holds unacknowledged, against `limit()`
    (`[stream_management].max_unacked_bytes_total`). Past it, the session holding the most is `cut` (once):
    its owner closes it with `<resource-constraint/>` and its stanzas go where §4 sends them."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self.total = 0
        self._members: dict[int, tuple[SmState, Callable[[], None]]] = {}
        self._cut: set[int] = set()

    def join(self, state: SmState, cut: Callable[[], None]) -> None:
        """Count `state`'s queue from now on; `cut` closes its session (from a synchronous path)."""
        if state.budget is self:
            return
        state.budget = self
        self._members[id(state)] = (state, cut)
        self.changed(state, state.unacked_bytes)

    def leave(self, state: SmState) -> None:
        if self._members.pop(id(state), None) is not None:
            self._cut.discard(id(state))
            self.total -= state.unacked_bytes
        state.budget = None

    def changed(self, state: SmState, delta: int) -> None:
        self.total += delta
        if delta > 0 and self.total > self._limit():
            self._overflow()

    def _overflow(self) -> None:
        limit = self._limit()
        being_cut = sum(self._members[key][0].unacked_bytes for key in self._cut)
        if self.total - being_cut <= limit:
            return  # the sessions already being closed will bring it back under
        candidates = [member for key, member in self._members.items() if key not in self._cut]
        if candidates:
            state, cut = max(candidates, key=lambda member: member[0].unacked_bytes)
            self._cut.add(id(state))
            cut()


def is_stanza(node: etree._Element) -> bool:
    """§4 counts message, presence and iq only (in jabber:client, or unqualified: the stream's default)."""
    name = etree.QName(node)
    return name.localname in _STANZA_NAMES and name.namespace in (None, ns.CLIENT)


def parse_stanza(data: bytes) -> etree._Element:
    """A queued stanza back as an element in jabber:client (raises etree.XMLSyntaxError if unreadable)."""
    scope = etree.fromstring(_SCOPE_OPEN + data + _SCOPE_CLOSE, _PARSER)
    return scope[0]


def parse_h(value: str | None) -> int:
    """An 'h' attribute (§4, xs:unsignedInt); a missing or malformed one is a stream error."""
    text = (value or "").strip()
    if not text.isascii() or not text.isdigit() or int(text) >= MAX_SEQ:
        raise StreamError(
            "bad-format", f"'h' must be an unsigned 32-bit integer, not {value!r} (XEP-0198 §4)"
        )
    return int(text)


# -- the nonzas the server sends -------------------------------------------------------------------------


def enabled(state: SmState) -> etree._Element:
    """§3: `<enabled/>`; with an id and `max` when the session may be resumed."""
    node = element(SM, "enabled")
    if state.resumable:
        node.set("id", state.id)
        node.set("resume", "true")
        node.set("max", str(state.max_seconds))
    return node


def resumed(state: SmState) -> etree._Element:
    """§5: `<resumed previd h/>`, 'h' being what the server handled on the old stream."""
    return element(SM, "resumed", previd=state.id, h=str(state.h_in))


def ack_request() -> etree._Element:
    """§4: `<r/>`, asking the peer how many stanzas it has handled."""
    return element(SM, "r")


def ack(state: SmState) -> etree._Element:
    return element(SM, "a", h=str(state.h_in))


def failed(condition: StanzaCondition, text: str | None = None) -> etree._Element:
    """§3, §5: `<failed/>` with a stanza error condition (and a human-readable text)."""
    node = element(SM, "failed")
    child(node, ns.STANZA_ERRORS, condition)
    if text:
        child(node, ns.STANZA_ERRORS, "text", text)
    return node
