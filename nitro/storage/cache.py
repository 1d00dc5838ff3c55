"""The in-process cache: a bounded LRU (entries and bytes) with a TTL and hit/miss/eviction counters.

Entries belong to a group (one owner's values of one kind); `invalidate(group)` drops them and
advances a counter, so a fill that started before the invalidation (`snapshot`) is refused.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_REMEMBERED_INVALIDATIONS = 10_000  # groups whose last invalidation is remembered one by one


@dataclass(frozen=True, slots=True)
class Entry:
    value: Any
    kind: str
    group: str
    size: int
    token: str | None  # the ring generation the value was read at (None: not validated by a ring)
    expires: float


class LruCache:
    """Least recently used entries go first once `max_entries` or `max_bytes` is exceeded."""

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        # group -> its one key, or a set of its keys once it has several (most groups hold one value, and
        # a set costs 216 bytes: three of them per online user, see `_add_to_group`)
        self._groups: dict[str, str | set[str]] = {}
        self._bytes = 0
        self._counter = 0
        self._invalidated: OrderedDict[str, int] = OrderedDict()
        self._floor = 0  # invalidations older than the remembered ones count as this one
        self.stats: dict[str, dict[str, int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def _count(self, kind: str, what: str, times: int = 1) -> None:
        counters = self.stats.setdefault(kind, {"hits": 0, "misses": 0, "evictions": 0, "expired": 0})
        counters[what] += times

    def hit(self, kind: str, times: int = 1) -> None:
        self._count(kind, "hits", times)

    def miss(self, kind: str, times: int = 1) -> None:
        self._count(kind, "misses", times)

    def peek(self, key: str) -> Entry | None:
        """The live entry (now the most recently used), None if absent or expired; counts nothing
        but expiry: the caller decides whether it is a hit (it may still have to validate it)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            self._remove(key)
            self._count(entry.kind, "expired")
            return None
        self._entries.move_to_end(key)
        return entry

    def get(self, key: str, kind: str) -> Any | None:
        """The value, counting a hit or a miss (for callers that need no validation)."""
        entry = self.peek(key)
        self._count(kind, "misses" if entry is None else "hits")
        return None if entry is None else entry.value

    def snapshot(self) -> int:
        """Taken before reading the value from below; pass it to `put`."""
        return self._counter

    def put(
        self, key: str, kind: str, group: str, value: Any, size: int, *, token: str | None, snapshot: int
    ) -> bool:
        """Store the value unless its group was invalidated since `snapshot`, or it is too big."""
        last = self._invalidated.get(group, self._floor)
        if last > snapshot or size > self.max_bytes or self.max_entries <= 0:
            return False
        self._remove(key)
        self._entries[key] = Entry(value, kind, group, size, token, self._clock() + self.ttl)
        self._add_to_group(group, key)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            oldest, entry = next(iter(self._entries.items()))
            self._remove(oldest)
            self._count(entry.kind, "evictions")
        return True

    def invalidate(self, group: str) -> None:
        """Drop the group's entries and refuse fills that began before now."""
        self._counter += 1
        self._invalidated[group] = self._counter
        self._invalidated.move_to_end(group)
        while len(self._invalidated) > _REMEMBERED_INVALIDATIONS:
            _, counter = self._invalidated.popitem(last=False)
            self._floor = max(self._floor, counter)
        keys = self._groups.get(group)
        for key in [keys] if isinstance(keys, str) else list(keys or ()):
            self._remove(key)

    def clear(self) -> None:
        """Drop everything (e.g. the ring changed under us); refuse fills in progress."""
        self._counter += 1
        self._floor = self._counter
        self._invalidated.clear()
        self._entries.clear()
        self._groups.clear()
        self._bytes = 0

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._bytes -= entry.size
        keys = self._groups.get(entry.group)
        if isinstance(keys, str):
            if keys == key:
                del self._groups[entry.group]
        elif keys is not None:
            keys.discard(key)
            if len(keys) == 1:
                self._groups[entry.group] = next(iter(keys))

    def _add_to_group(self, group: str, key: str) -> None:
        keys = self._groups.get(group)
        if keys is None:
            self._groups[group] = key
        elif isinstance(keys, str):
            if keys != key:
                self._groups[group] = {keys, key}
        else:
            keys.add(key)
