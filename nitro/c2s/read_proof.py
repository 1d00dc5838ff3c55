"""Proof of reading for a client without stream management (issue 14): the messages written to it that
offline storage would keep (XEP-0160), since it last answered an IQ the server sent after them (a XEP-0199
ping; the stream is ordered, so an answer proves the client processed everything before it).

No I/O and no clock of its own: the session says what it wrote and when, sends the ping this asks for, and
reports the answer. What was never proven read is re-routed when the server closes the stream (an upgrade's
drain, a shutdown, an unanswered ping): stored offline, duplicates possible, never a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING

from lxml import etree

from nitro.c2s.inputs import State
from nitro.c2s.keepalive import Keepalive
from nitro.c2s.resource_state import ResourceState
from nitro.c2s.transport import Transport
from nitro.config import C2SSection
from nitro.xmpp import ns
from nitro.xmpp.errors import StreamError
from nitro.xmpp.jid import JID
from nitro.xmpp.sm import SmState, parse_stanza
from nitro.xmpp.stanza import worth_storing

if TYPE_CHECKING:
    from nitro.core.context import Core

PROVE_AFTER = 32  # messages written since the last ping: a ping is sent to prove them
PROVE_AGE = 30.0  # seconds the oldest message not yet covered by a ping may wait for one

_MESSAGE_TAGS = frozenset((f"{{{ns.CLIENT}}}message", "message"))  # jabber:client, or the stream's default
_KEPT_TYPES = (None, "chat", "normal")  # RFC 6121 §8.5.2: offline storage keeps these (not error, groupchat…)


def kept_offline(message: etree._Element) -> bool:
    """A message offline storage would keep, were it undelivered: chat or normal, with content (XEP-0160)."""
    return message.tag in _MESSAGE_TAGS and message.get("type") in _KEPT_TYPES and worth_storing(message)


class ReadProof:
    """The messages not yet proven read, oldest first; the first `covered` precede the ping awaited."""

    __slots__ = ("_answered", "_pinged_at", "_since", "covered", "pending")

    def __init__(self) -> None:
        self.pending: deque[bytes] = deque()  # serialised: smaller than elements, and no later change shows
        self.covered = 0  # how many of `pending` the awaited ping follows (0: none awaited)
        self._pinged_at = 0.0
        self._since = 0.0  # when the oldest message after the awaited ping (or of all, if none) was written
        self._answered: asyncio.Event | None = None  # a close waiting for the proof

    def written(self, message: etree._Element, now: float) -> None:
        if len(self.pending) == self.covered:
            self._since = now
        self.pending.append(etree.tostring(message, encoding="utf-8"))

    @property
    def unproven(self) -> int:
        return len(self.pending)

    def awaiting(self, now: float, timeout: float) -> bool:
        """A ping covering some of `pending` was sent less than `timeout` seconds ago, unanswered."""
        return self.covered > 0 and now - self._pinged_at < timeout

    def due(self, now: float, timeout: float) -> bool:
        """A ping should go now: enough messages or old enough ones wait, and none is awaited (no flood)."""
        if self.awaiting(now, timeout):
            return False
        waiting = len(self.pending)  # a ping not answered in time proves nothing: the next covers all
        return waiting >= PROVE_AFTER or (waiting > 0 and now - self._since >= PROVE_AGE)

    def deadline(self, timeout: float) -> float | None:
        """The monotonic time at which `due` turns True by age alone (None: nothing waits)."""
        if not self.pending:
            return None
        if self.covered:
            return max(self._pinged_at + timeout, self._since + PROVE_AGE)
        return self._since + PROVE_AGE

    def pinged(self, now: float) -> None:
        """A ping was written after everything in `pending`: its answer proves them all."""
        self.covered = len(self.pending)
        self._pinged_at = now
        self._since = now

    def proven(self) -> None:
        """The awaited ping was answered (result or error): what it followed was read."""
        for _ in range(self.covered):
            self.pending.popleft()
        self.covered = 0
        if self._answered is not None:
            self._answered.set()

    async def answered(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) for the answer to the awaited ping; whether it came."""
        if self.covered == 0:
            return True
        self._answered = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._answered.wait()
        except TimeoutError:
            return False
        finally:
            self._answered = None
        return True

    def take(self) -> list[etree._Element]:
        """Everything not proven read, oldest first; the proof starts over."""
        stanzas: list[etree._Element] = []
        for data in self.pending:
            with contextlib.suppress(etree.XMLSyntaxError):  # our own serialisation: always readable
                stanzas.append(parse_stanza(data))
        self.pending.clear()
        self.covered = 0
        return stanzas


class ReadProofs(ResourceState):
    """The session's side (nitro/c2s/session.py): it tracks what it writes without stream management and
    pings to prove it. A link of the session's chain of slotted bases, like HeldAcks."""

    __slots__ = ("proof",)

    server: Core
    config: C2SSection
    transport: Transport
    sm: SmState | None
    state: State

    def __init__(self, jid: JID) -> None:
        ResourceState.__init__(self, jid)
        self.proof: ReadProof | None = None  # created with the first message to prove (idle memory)

    def send(self, element: etree._Element) -> None:
        raise NotImplementedError

    def _end_soon(self, error: StreamError) -> None:
        raise NotImplementedError

    def track_written(self, element: etree._Element) -> None:
        """`element` was written to a client without stream management: a message to prove, maybe."""
        if self.sm is not None or self.state is not State.ESTABLISHED or self.transport.kind == "bosh":
            return  # BOSH has its own acknowledgements (XEP-0124 §9) and moves whole in an upgrade
        if not kept_offline(element):
            return
        proof = self.proof
        if proof is None:
            proof = self.proof = ReadProof()
        now = time.monotonic()
        proof.written(element, now)
        timeout = self.config.ping_timeout
        bound = self.server.config.stream_management.max_unacked
        if proof.unproven > bound and not proof.awaiting(now, timeout):
            # Its ping is overdue (a silent client is closed by the keepalive then; this one talks but does
            # not answer): as XEP-0198 §4 for unacknowledged stanzas. A burst while the answer may still come
            # (an offline flush) is not cut: memory stays within what is written in `ping_timeout`.
            self._end_soon(StreamError("policy-violation", f"more than {bound} messages not proven read"))
        elif proof.due(now, timeout):
            self.send_ping(now)

    def send_ping(self, now: float) -> None:
        """A XEP-0199 ping to the client (§4.2); its answer also proves what was written before it."""
        ping = etree.Element("iq", type="get", id=self.start_ping(now), to=self.jid_text)
        ping.set("from", self.server.config.server.domain)
        etree.SubElement(ping, f"{{{ns.PING}}}ping", nsmap=ns.default_ns(ns.PING))
        self.send(ping)
        if self.proof is not None:
            self.proof.pinged(now)

    def ping_answered(self) -> None:
        """The client answered our ping (a result, or an error: either shows it read what came before)."""
        proof = self.proof
        if proof is None:
            return
        proof.proven()
        now = time.monotonic()
        if not proof.pending:
            self.proof = None
        elif proof.due(now, self.config.ping_timeout):
            self.send_ping(now)

    def prove_if_due(self, now: float) -> None:
        if self.proof is not None and self.proof.due(now, self.config.ping_timeout):
            self.send_ping(now)

    def next_deadline(self) -> float:
        deadline = Keepalive.next_deadline(self)
        if self.proof is not None and (due := self.proof.deadline(self.config.ping_timeout)) is not None:
            return min(deadline, due)
        return deadline

    async def proved(self, timeout: float) -> bool:
        """Before a close: ping (unless one is awaited) and wait at most `timeout` seconds for the answer;
        whether everything written was proven read. What is left in `proof` then was not."""
        proof = self.proof
        if proof is None or not proof.pending:
            return True
        now = time.monotonic()
        if not (proof.awaiting(now, self.config.ping_timeout) and proof.covered == proof.unproven):
            self.send_ping(now)  # the answer to this one proves everything
        return await proof.answered(timeout) and not proof.pending
