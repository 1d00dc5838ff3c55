"""Failed-login throttling per remote address: a sliding window of recent failures."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class FailureThrottle:
    """Blocks a key after `limit` failures within `window` seconds, until the oldest one ages out."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        horizon = self._clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def blocked(self, key: str) -> bool:
        return len(self._recent(key)) >= self.limit

    def record_failure(self, key: str) -> None:
        self._recent(key)
        failures = self._failures.setdefault(key, deque())
        failures.append(self._clock())
        if len(self._failures) > 100_000:  # bound memory under a distributed flood: forget the oldest key
            self._failures.pop(next(iter(self._failures)))
