"""Offline messages through the tiers: on the embedded SQLite default, the users known to have none.

Most logins find no offline message, yet each asked SQL. Without a ring, on a watched SQLite file, the
usernames whose listing came back empty are kept in a set (a pointer each, where a cache entry costs
~0.5 KB of every idle session's memory). The set is only ever a subset of the truth:
* a push or a delete of ours removes its user after its commit, or its failure (whose commit may have
  happened), and a listing that read while any push or delete ran keeps nothing;
* a commit by another process (another node on the file, `nitro` commands) is seen by the tiers'
  data_version check (tiers.py), which starts a new generation: the set is emptied before it is used again,
  and a listing that read during an older generation keeps nothing.
So a message stored elsewhere is listed at the next login. With a ring (a cluster, maybe with nodes that
would not tell this one of their pushes) or without a watch, every listing reads SQL.
"""

from __future__ import annotations

from collections.abc import Sequence

from nitro.storage.models import OfflineMessage
from nitro.storage.protocols import OfflineStore
from nitro.storage.tiers import Tiers

KIND = "offline"  # in the cache's hit/miss statistics


class CachedOfflineStore:
    """OfflineStore whose `list` answers "none" from memory for users known to have none (see above)."""

    def __init__(self, sql: OfflineStore, tiers: Tiers) -> None:
        self._sql = sql
        self._tiers = tiers
        self._none: set[str] = set()
        self._generation = tiers.generation()
        self._writes = 0  # pushes and deletes ended: a listing that saw this move keeps nothing

    @property
    def _cached(self) -> bool:
        return self._tiers.ring is None and self._tiers.watch is not None  # the watch may fail to open

    def _wrote(self, username: str) -> None:
        self._writes += 1
        self._none.discard(username)

    async def push(self, username: str, stanza: bytes, *, quota: int) -> int:
        try:
            return await self._sql.push(username, stanza, quota=quota)
        finally:
            self._wrote(username)

    async def list(self, username: str) -> list[OfflineMessage]:
        if not self._cached:
            return await self._sql.list(username)
        await self._tiers.fresh()  # a commit by another process: a new generation
        generation = self._tiers.generation()
        if generation != self._generation:
            self._none.clear()
            self._generation = generation
        cache = self._tiers.cache
        if username in self._none:
            cache.hit(KIND)
            return []
        cache.miss(KIND)
        writes = self._writes
        messages = await self._sql.list(username)
        if not messages and writes == self._writes and generation == self._tiers.generation():
            if len(self._none) >= max(cache.max_entries, 1):
                self._none.clear()  # bounded as the cache is
            self._none.add(username)
        return messages

    async def delete(self, username: str, ids: Sequence[int]) -> None:
        try:
            await self._sql.delete(username, ids)
        finally:
            self._wrote(username)

    async def count(self, username: str) -> int:
        return await self._sql.count(username)

    def __len__(self) -> int:
        """Users known to have no offline message."""
        return len(self._none)
