"""A prioritised event bus: named events, handlers run highest priority first until one claims the event."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# A handler returns True to say "handled, stop here"; None or False lets lower-priority handlers run.
Handler = Callable[[Any], Awaitable[bool | None]]

_order = itertools.count()


@dataclass(order=True, slots=True)
class _Entry:
    sort_key: tuple[int, int]
    handler: Handler = field(compare=False)


class EventBus:
    """Named events (`message/bare`, `iq-get/host/urn:xmpp:ping:ping`, ...) mapped to ordered handlers."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[_Entry]] = {}

    def add(self, name: str, handler: Handler, priority: int = 0) -> Callable[[], None]:
        """Register `handler` for `name`; returns the function that removes exactly this registration."""
        entry = _Entry((-priority, next(_order)), handler)
        bisect.insort(self._handlers.setdefault(name, []), entry)

        def remove() -> None:
            entries = self._handlers.get(name, [])
            if entry in entries:
                entries.remove(entry)
            if not entries:
                self._handlers.pop(name, None)

        return remove

    def has(self, name: str) -> bool:
        return name in self._handlers

    async def fire(self, name: str, event: object) -> bool:
        """Run the handlers of `name` in order; True as soon as one of them claims the event."""
        entries = self._handlers.get(name)
        if not entries:
            return False
        for entry in tuple(entries):
            if await entry.handler(event):
                return True
        return False
