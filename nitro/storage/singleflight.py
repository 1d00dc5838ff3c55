"""Concurrent reads of the same key share one read (a thousand sessions of one account logging in at once
read its credentials and its roster once). A write to the key makes reads that start after it read afresh:
the in-flight read is forgotten when the write begins and again when it has been acknowledged. A read of
another `generation` (the data may have changed elsewhere since the flight began) never joins it.

The first reader runs the load itself, in its own task: no task is made and no loop turn is spent per read
(on the embedded SQLite default most reads complete without suspending: a cache hit, or a read on the
loop's connection). Readers that join while it is suspended wait for its outcome, value or failure. A
joiner that is cancelled leaves the read alone; if the first reader is cancelled, its read ends with it and
the joiners read again (one of them becomes the first reader), so none of them sees that cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")


class _Abandoned(Exception):
    """The first reader was cancelled before its read ended: whoever joined it reads again."""


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._reading: dict[str, asyncio.Future[T]] = {}
        self._generations: dict[str, int] = {}

    async def read(self, key: str, load: Callable[[], Awaitable[T]], generation: int = 0) -> T:
        while True:
            pending = self._reading.get(key)
            if pending is None or self._generations.get(key) != generation:
                break
            try:
                return await asyncio.shield(pending)  # a joiner's cancellation stops at the shield
            except _Abandoned:
                continue
        shared: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._reading[key] = shared
        self._generations[key] = generation
        try:
            value = await load()
        except Exception as error:
            self._end(key, shared)
            shared.set_exception(error)
            shared.exception()  # retrieved: a failed read nobody joined is not "never retrieved"
            raise
        except BaseException:  # cancelled (or the process is exiting): the joiners read again
            self._end(key, shared)
            shared.set_exception(_Abandoned())
            shared.exception()
            raise
        self._end(key, shared)
        shared.set_result(value)
        return value

    def _end(self, key: str, shared: asyncio.Future[T]) -> None:
        if self._reading.get(key) is shared:
            del self._reading[key]
            self._generations.pop(key, None)

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
