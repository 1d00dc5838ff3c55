"""One `call_at` handle following a deadline that moves: the timer of a connection's stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Deadline:
    """Calls `wake` once `time.monotonic()` has reached the deadline last `set`. The handle is moved only when
    the deadline comes earlier; when it fires early (the deadline moved later) it re-arms itself instead of
    waking anyone. `due` stays True until `consume`d."""

    __slots__ = ("_at", "_deadline", "_handle", "_loop", "_wake", "due")

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        self._loop = loop
        self._wake = wake
        self._deadline = 0.0
        self._handle: asyncio.Handle | None = None
        self._at = 0.0
        self.due = False

    def set(self, deadline: float) -> None:
        self._deadline = deadline
        if self._handle is None or self._at > deadline:
            self._arm(deadline)

    def consume(self) -> bool:
        """Whether the deadline was reached (and forget it)."""
        due, self.due = self.due, False
        return due

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, deadline: float) -> None:
        # uvloop turns a call_at in the past into a plain Handle without when(): the time is kept here
        if self._handle is not None:
            self._handle.cancel()
        self._at = deadline
        # the stream keeps time.monotonic(); asyncio's clock may differ by an offset
        self._handle = self._loop.call_at(deadline - time.monotonic() + self._loop.time(), self._fired)

    def _fired(self) -> None:
        self._handle = None
        if time.monotonic() >= self._deadline:
            self.due = True
            self._wake()
        else:  # the deadline moved later since the handle was set: just follow it
            self._arm(self._deadline)
