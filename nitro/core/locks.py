"""Per-user asyncio locks for read-modify-write sequences on one node (roster items, offline delivery)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class UserLocks:
    """One asyncio.Lock per username, dropped when nobody holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, username: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(username, (asyncio.Lock(), 0))
        self._locks[username] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[username]
            if users == 1:
                del self._locks[username]
            else:
                self._locks[username] = (lock, users - 1)
