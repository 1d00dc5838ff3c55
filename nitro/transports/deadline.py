"""The coarse timers of connections' streams: one timer wheel per event loop (one loop handle for all of them,
in buckets of RESOLUTION seconds) and the `Deadline` a connection moves on it."""

from __future__ import annotations

import asyncio
import heapq
import time
import weakref
from typing import Final, Protocol

# Seconds per bucket: a deadline is reached up to this much late (never early). Every user of a stream
# deadline tolerates that: negotiation timeout, idle ping and its timeout, whitespace keepalive, the
# read-proof ping, the release of an idle parser (seconds to minutes). Precise timers (traffic shaping's
# pace, a blocked write) do not use the wheel.
RESOLUTION: Final = 0.25

_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TimerWheel] = weakref.WeakKeyDictionary()


def wheel_of(loop: asyncio.AbstractEventLoop) -> TimerWheel:
    """The event loop's timer wheel (made on first use). A wheel still waiting when its loop closed holds a
    handle, which holds the loop: such wheels go when the next loop makes its own (tests run many)."""
    wheel = _wheels.get(loop)
    if wheel is None:
        for closed in [other for other in _wheels if other.is_closed()]:
            del _wheels[closed]
        wheel = _wheels[loop] = TimerWheel(loop)
    return wheel


class TimerWheel:
    """Deadlines grouped by the bucket they fall in (bucket k ends at k * RESOLUTION, time.monotonic());
    one `call_at` handle waits for the earliest bucket. A bucket emptied by cancellations stays in the heap
    until its time and is then skipped."""

    __slots__ = ("__weakref__", "_armed", "_buckets", "_done", "_handle", "_heap", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # not the loop itself: `_wheels` would keep every loop alive
        self._buckets: dict[int, set[Deadline]] = {}
        self._heap: list[int] = []  # the keys of `_buckets`, and maybe some emptied since
        self._handle: asyncio.Handle | None = None
        self._armed = 0  # the bucket `_handle` waits for
        self._done = 0  # every bucket up to this one has fired: later additions go after it

    def __len__(self) -> int:
        """How many deadlines wait (for tests: a cancelled or consumed one leaves nothing behind)."""
        return sum(len(bucket) for bucket in self._buckets.values())

    def add(self, deadline: Deadline, when: float) -> int:
        """Put `deadline` in the bucket that ends at or after `when`; returns the bucket's key."""
        key = max(int(when / RESOLUTION) + 1, self._done + 1)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
            heapq.heappush(self._heap, key)
            if self._handle is None or key < self._armed:
                self._arm(key)
        bucket.add(deadline)
        return key

    def remove(self, deadline: Deadline, key: int) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.discard(deadline)
            if not bucket:
                del self._buckets[key]
                if not self._buckets and self._handle is not None:
                    self._handle.cancel()
                    self._handle = None
                    self._heap.clear()

    def _arm(self, key: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        loop = self._loop()
        if loop is None:
            return
        self._armed = key
        # the buckets keep time.monotonic(); asyncio's clock may differ by an offset
        self._handle = loop.call_at(key * RESOLUTION - time.monotonic() + loop.time(), self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = time.monotonic()
        heap = self._heap
        reached: list[Deadline] = []
        while heap and heap[0] * RESOLUTION <= now:
            key = heapq.heappop(heap)
            self._done = max(self._done, key)
            bucket = self._buckets.pop(key, None)
            if bucket:
                reached.extend(bucket)
        while heap and heap[0] not in self._buckets:
            heapq.heappop(heap)  # emptied by cancellations
        if heap:
            self._arm(heap[0])  # before the deadlines run: what they add compares with it
        for deadline in reached:
            deadline.reached(now)


class Owner(Protocol):
    """What a `Deadline` tells when it is reached (the connection)."""

    def deadline_reached(self) -> None: ...


class Deadline:
    """Calls `owner.deadline_reached()` once `time.monotonic()` has reached the deadline last `set` (at most
    RESOLUTION late). Its entry on the wheel moves only when the deadline comes earlier; when the entry is
    reached early (the deadline moved later) it is put back for the new time instead of waking anyone. `due`
    stays True until `consume`d."""

    __slots__ = ("_deadline", "_key", "_owner", "_wheel", "due")

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: Owner) -> None:
        self._wheel = wheel_of(loop)
        self._owner = owner  # not a bound method: that would be one more object per connection
        self._deadline = 0.0
        self._key = 0  # the wheel bucket holding this deadline; 0: none
        self.due = False

    def set(self, deadline: float) -> None:
        self._deadline = deadline
        if not self._key or self._key * RESOLUTION - RESOLUTION > deadline:
            if self._key:
                self._wheel.remove(self, self._key)
            self._key = self._wheel.add(self, deadline)

    def consume(self) -> bool:
        """Whether the deadline was reached (and forget it)."""
        due, self.due = self.due, False
        return due

    def cancel(self) -> None:
        if self._key:
            self._wheel.remove(self, self._key)
            self._key = 0

    def reached(self, now: float) -> None:
        """The wheel reached this deadline's bucket (and dropped it from there)."""
        self._key = 0
        if now >= self._deadline:
            self.due = True
            self._owner.deadline_reached()
        else:  # the deadline moved later since it was put on the wheel: follow it
            self._key = self._wheel.add(self, self._deadline)
