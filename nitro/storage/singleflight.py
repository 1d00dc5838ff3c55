"""Concurrent reads of the same key share one read (a thousand sessions of one account logging in at once
read its credentials and its roster once). A write to the key makes reads that start after it read afresh:
the in-flight read is forgotten when the write begins and again when it has been acknowledged. A read of
another `generation` (the data may have changed elsewhere since the flight began) never joins it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._reading: dict[str, asyncio.Future[T]] = {}
        self._generations: dict[str, int] = {}

    async def read(self, key: str, load: Callable[[], Awaitable[T]], generation: int = 0) -> T:
        pending = self._reading.get(key)
        if pending is None or self._generations.get(key) != generation:
            pending = asyncio.ensure_future(load())
            self._reading[key] = pending
            self._generations[key] = generation
            pending.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(pending)

    def _forget(self, key: str, done: asyncio.Future[T]) -> None:
        if self._reading.get(key) is done:
            del self._reading[key]
            self._generations.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: a failed read nobody waits for any more is not "never retrieved"

    def forget(self, key: str) -> None:
        self._reading.pop(key, None)
        self._generations.pop(key, None)

    @contextmanager
    def writing(self, key: str) -> Iterator[None]:
        """Around a write of `key` (its invalidation included): reads begun before it are not shared after."""
        self.forget(key)
        try:
            yield
        finally:
            self.forget(key)
