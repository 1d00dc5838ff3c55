"""XEP-0198 acknowledgements held back until durable: a handled stanza counts in 'h' only once what it stored
in the background (its archive rows, nitro/core/durability.py) is committed, so acknowledged ⇒ on disk.

Stanzas are released in the order they were handled (h stays monotonic: a stanza whose writes finished
early waits for the ones before it); an `<r/>` that arrives while some are held is answered once those
handled before it are released.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from lxml import etree

from nitro.c2s.inputs import State
from nitro.c2s.keepalive import Keepalive
from nitro.core.durability import Promise
from nitro.xmpp.sm import SmState, ack

# Seconds a closing or resumed session waits for its held acknowledgements (archive commits) before it
# reports 'h' without them (the client then sends those stanzas again: duplicates, never a loss).
ACK_DRAIN_TIMEOUT = 5.0


def _durable(promises: list[Promise]) -> bool:
    return all(promise.done() and not promise.cancelled() for promise in promises)


class AckGate:
    """Per session: `release` counts one more stanza handled (SmState.received), `answer` sends `<a h/>`."""

    __slots__ = ("_answer", "_appended", "_drained", "_held", "_owed", "_release", "_released")

    def __init__(self, release: Callable[[], None], answer: Callable[[], None]) -> None:
        self._release = release
        self._answer = answer
        self._held: deque[list[Promise]] = deque()  # per handled stanza not yet counted: its promises
        self._appended = 0  # stanzas ever held, and released
        self._released = 0
        self._owed: deque[int] = deque()  # per unanswered `<r/>`: how many held stanzas it waits for
        self._drained: asyncio.Event | None = None

    @property
    def holding(self) -> int:
        """Stanzas handled but not yet counted."""
        return len(self._held)

    def handled(self, promises: list[Promise]) -> None:
        """One more stanza handled; it counts once `promises` are all fulfilled (and those before it)."""
        if not self._held and _durable(promises):
            self._release()
            return
        self._held.append(promises)
        self._appended += 1
        for promise in promises:
            if not promise.done():
                promise.add_done_callback(self._advance)
        self._advance()

    def request(self) -> None:
        """An `<r/>` (XEP-0198 §4): answered now, or once what was handled before it is released."""
        if not self._held:
            self._answer()
        else:
            self._owed.append(self._appended)

    async def drained(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) until nothing is held; whether that happened."""
        if not self._held:
            return True
        if self._drained is None:
            self._drained = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._drained.wait()
        except TimeoutError:
            return False
        return True

    def _advance(self, _done: Promise | None = None) -> None:
        held = self._held
        while held and _durable(held[0]):
            held.popleft()
            self._released += 1
            self._release()
        while self._owed and self._owed[0] <= self._released:
            self._owed.popleft()
            self._answer()
        if not held and self._drained is not None:
            self._drained.set()
            self._drained = None


class HeldAcks(Keepalive):
    """The session's side (nitro/c2s/session.py): its stanzas go through a gate once one had to wait.
    It extends Keepalive only so that the session's attributes are one chain of __slots__ (Keepalive →
    HeldAcks → ResourceState → ClientSession; two slotted bases cannot be combined)."""

    __slots__ = ("_acks",)

    sm: SmState | None
    state: State

    def __init__(self) -> None:
        self._acks: AckGate | None = None  # created the first time a stanza's writes were not done

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        raise NotImplementedError  # the session's (made on demand)

    def write_element(self, element: etree._Element) -> None:
        raise NotImplementedError

    def _handled(self, promises: list[Promise]) -> None:
        """XEP-0198 §4: counted once handled, and once what handling it stored is durable."""
        assert self.sm is not None
        if self._acks is None:
            if not promises:
                self.sm.received()
                return
            self._acks = AckGate(self._count_one, self._answer_ack)
        self._acks.handled(promises)

    def _count_one(self) -> None:
        if self.sm is not None:
            self.sm.received()

    def _answer_ack(self) -> None:
        if self.sm is not None and self.state is State.ESTABLISHED:
            self.write_element(ack(self.sm))

    def answer_ack_request(self) -> None:
        """§4: `<r/>` is answered with the count of stanzas handled, held until those are durable."""
        if self._acks is None:
            self._answer_ack()
        else:
            self._acks.request()

    @property
    def acks_held(self) -> int:
        """Stanzas handled but not yet counted in 'h' (their writes are not durable yet)."""
        return 0 if self._acks is None else self._acks.holding

    async def acks_drained(self) -> None:
        """Wait (boundedly) until every handled stanza counts in 'h' (see ACK_DRAIN_TIMEOUT)."""
        if self._acks is not None and not await self._acks.drained(ACK_DRAIN_TIMEOUT):
            self.log.warning("%d stanzas not yet stored are left out of 'h'", self._acks.holding)
