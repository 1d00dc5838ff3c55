"""Stanzas the old process of an upgrade forwards for a session before the session itself has come over (its
`sessions` message is behind them on the upgrade socket): held on the successor, in order, until the session
arrives (then delivered to it) or its fate is known or HOLD_BOUND passes (then routed as any forwarded stanza:
another resource, offline storage, RFC 6121 §8)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from nitro.ops.adopt import deliver_forwarded

if TYPE_CHECKING:
    from nitro.server import Server

log = logging.getLogger(__name__)

HOLD_BOUND = 2.0  # seconds a forwarded stanza waits for its session to arrive


class HeldStanzas:
    """Full JID → the serialised stanzas waiting for its session, oldest first."""

    def __init__(self, server: Server, bound: float = HOLD_BOUND) -> None:
        self.server = server
        self.bound = bound
        self._held: dict[str, list[str]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.count = 0  # stanzas ever held (status, tests)

    def holding(self, to: str) -> bool:
        return to in self._held

    def hold(self, to: str, stanza: str) -> None:
        queue = self._held.get(to)
        if queue is None:
            queue = self._held[to] = []
            self._timers[to] = asyncio.get_running_loop().call_later(
                self.bound, lambda: self.server.spawn(self.release(to))
            )
        queue.append(stanza)
        self.count += 1

    async def release(self, to: str) -> None:
        """To its session if it is here now, else routed; in the order they came."""
        timer = self._timers.pop(to, None)
        if timer is not None:
            timer.cancel()
        for stanza in self._held.pop(to, ()):
            try:
                await deliver_forwarded(self.server, to, stanza)
            except Exception:  # one stanza's routing error (e.g. storage down) never stops the others
                log.exception("upgrade: a held stanza for %s was not delivered", to)

    async def release_all(self) -> None:
        for to in list(self._held):
            await self.release(to)
