"""The read and write paths through the tiers: in-process cache → Redis ring → SQL.

The guarantee: once a write's SQL commit returned (and so before the client hears of it), no node
serves the old value, because every value served from a cache tier is checked against a generation
token that the write replaced:

* Each owner (user) and cached kind has a generation key in the ring. A write commits to SQL, then on
  every live instance sets a new random generation and deletes the value (one script each), then
  publishes an invalidation on every live instance. Values are read from, and filled on, the instance
  the owner hashes to; since every live instance has the current generation, an owner moving to
  another instance (one goes out) finds no old value there that would match.
* A read fetches `<epoch>|<generation>` (one MGET, with the value when there is no local copy). A local
  entry or a ring value is served only if it was stored under that very token; otherwise SQL is read and
  the ring filled by a compare-and-set on the token read *before* SQL, so a slow reader never stores an
  old value over a newer invalidation. Random generations never repeat, so an old token never matches.
* The epoch fences instances: an instance that was out (or restarted) is flushed and gets a new epoch
  before it is used again; an instance whose owner cannot be written is taken out at once.
* Nodes may briefly disagree on which instances are live (one sees an instance as out before the
  other). The invalidation message names the instances that got the new generation; a node that sees
  another live one writes a new generation there too (or takes it out). That window lasts until the
  message arrives, i.e. only for an instance the writer could not reach but the reader can.
* Without a ring, values are cached only on a SQLite file (the embedded default): before each read,
  `PRAGMA data_version` on a watching connection (sqlite_watch.py) says whether any other connection
  committed since the last look. All of this process's writes go through one writing connection (see
  `Database`), and each write drops what it changed from the cache itself; so when the watch moves, the
  writing connection's own data_version (one query there) tells whether anyone *else* committed too —
  another process (`nitro user passwd`) — and only then is the whole cache dropped. Reads that find a
  check in flight wait for it, then look again. A read's lookup comes after a check it made itself once
  it began (`fresh`), so nothing is served across a commit made by another process before the read
  began; one made after that may or may not be seen, as by any read concurrent with it (the value served
  is then the one of the moment of the check, or newer: our own writes drop what they change, and a fill
  that read SQL before a drop is refused).
  Other backends without a ring cache nothing: another process could not tell us of its writes.
* With the owner's instance unreachable, reads go to SQL and nothing is cached or served from the cache;
  with SQL unreachable too they fail (StorageUnavailable), as do all writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import sqlite3
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from nitro.config import Config
from nitro.storage.cache import LruCache
from nitro.storage.codecs import CACHED_KINDS, Codec, CorruptValue
from nitro.storage.ring.instance import REDIS_ERRORS, Instance, RingUnavailable
from nitro.storage.ring.ring import Ring
from nitro.storage.sqlite_watch import DataVersion, watchable_path

log = logging.getLogger(__name__)

T = TypeVar("T")

_CODECS = {codec.kind: codec for codec in CACHED_KINDS}
_SEEN_MESSAGES = 1000  # ids of recent invalidations (each arrives once per instance)


def _group(kind: str, owner: str) -> str:
    """The cache group of one owner's values of one kind: the text of the key of its whole value without a
    ring (`_watched_key`), so such an entry's key and group are one string (idle memory)."""
    return f"{kind}.v{_CODECS[kind].version}:{owner}"


class Tiers:
    """The cache and the ring of one node (the ring is None without `[redis].instances`)."""

    def __init__(
        self,
        cache: LruCache,
        ring: Ring | None,
        watch: DataVersion | None = None,
        writer_version: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.cache = cache
        self.ring = ring
        self.watch = watch if ring is None else None  # the ring's generations validate values otherwise
        # data_version of the connection all our writes use: moves only for other processes' commits
        # (None: every commit the watch sees drops the cache)
        self._writer_version = writer_version
        self._last_writer_version: int | None = None
        self._check: asyncio.Task[None] | None = None  # a look at the writing connection in flight
        self._checks = 0  # looks started
        self._seen_changes = 0  # commits elsewhere noticed through `watch`
        self.node_id = secrets.token_hex(8)
        self._listeners: list[asyncio.Task[None]] = []
        self._seen: OrderedDict[str, None] = OrderedDict()

    @classmethod
    def from_config(cls, config: Config, writer_version: Callable[[], Awaitable[int]] | None = None) -> Tiers:
        cache = LruCache(config.cache.max_entries, config.cache.max_bytes, config.cache.ttl)
        ring = Ring(config.redis) if config.redis.instances else None
        path = watchable_path(config.storage.dsn)
        return cls(cache, ring, DataVersion(path) if path is not None else None, writer_version)

    async def start(self) -> None:
        if self.ring is None:
            if self.watch is not None:
                try:
                    self.watch.open()
                except sqlite3.Error as exc:
                    log.warning("not caching: cannot watch %s for commits: %s", self.watch.path, exc)
                    self.watch = None
            return
        await self.ring.start()
        for instance in self.ring.instances:
            self._listeners.append(asyncio.create_task(self._listen(instance), name=f"pubsub {instance.url}"))

    async def close(self) -> None:
        for task in self._listeners:
            task.cancel()
        for task in self._listeners:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.ring is not None:
            await self.ring.close()
        if self.watch is not None:
            self.watch.close()

    # -- read path ----------------------------------------------------------------------------------------

    async def read(
        self,
        codec: Codec[T],
        owner: str,
        load: Callable[[], Awaitable[T]],
        item: str | None = None,
        *,
        checked: bool = False,
    ) -> T:
        """The value from the first tier that has it fresh; `load` reads SQL. Fills the tiers above.
        `checked`: the caller awaited `fresh()` after its read began (the look is not made twice)."""
        ring = self.ring
        if ring is None:
            return await self._read_watched(codec, owner, load, item, checked)
        kind = codec.kind
        key = ring.keys.key(kind, codec.version, owner, item)
        counter = self.cache.snapshot()
        entry = self.cache.peek(key)
        try:
            snapshot = await ring.read(kind, owner, None if entry is not None else key)
            if entry is not None and entry.token == snapshot.token:
                self.cache.hit(kind)
                return _value(codec, entry.value)
            self.cache.miss(kind)
            if entry is not None:  # an outdated local copy: the ring's value, if any
                snapshot = await ring.read(kind, owner, key)
        except RingUnavailable:
            self.cache.miss(kind)
            ring.count(kind, "errors")
            return await load()
        if snapshot.value is not None:
            try:
                value = codec.decode(snapshot.value)
            except CorruptValue as exc:
                log.warning("undecodable %s for %s in the ring: %s", kind, owner, exc)
            else:
                ring.count(kind, "hits")
                kept = snapshot.value if codec.kept_encoded else value
                self._keep(key, kind, owner, kept, len(snapshot.value), snapshot.token, counter)
                return value
        ring.count(kind, "misses")
        value = await load()
        data = codec.encode(value)
        await ring.fill(snapshot, kind, owner, key, data)
        self._keep(
            key, kind, owner, data if codec.kept_encoded else value, len(data), snapshot.token, counter
        )
        return value

    def generation(self) -> int:
        """Changes when a commit by another process was noticed (`fresh`): concurrent reads share one read
        only within a generation (a read that starts after `nitro user passwd` returned never joins an
        older one)."""
        return self._seen_changes

    async def fresh(self) -> None:
        """Without a ring, on SQLite: returns once the cache holds nothing older than a commit another
        process made before this call (the cache is dropped if there was one). No-op otherwise."""
        watch = self.watch
        if watch is None:
            return
        arrived = self._checks
        while True:
            check = self._check
            if check is not None:
                await asyncio.shield(check)
                if self._check_number > arrived:
                    return  # that look at the writing connection began after this read did
                continue  # it began before: look again
            if not watch.changed():
                return  # nothing committed since the last look, which is complete
            if self._writer_version is None:
                self._drop()
                return
            self._checks += 1
            task = asyncio.ensure_future(self._look(self._checks))
            self._check = task
            await asyncio.shield(task)
            return

    _check_number = 0  # the number of the last completed look

    async def _look(self, number: int) -> None:
        """Whether a commit the watch saw was another process's, from the writing connection."""
        assert self._writer_version is not None
        try:
            version: int | None = await self._writer_version()
        except Exception as exc:  # whatever went wrong, the cache cannot be trusted
            log.debug("data_version of the writing connection: %s", exc)
            version = None
        finally:
            self._check = None
            self._check_number = number
        if version is None or version != self._last_writer_version:
            self._drop()
        self._last_writer_version = version

    def _drop(self) -> None:
        self.cache.clear()  # also refuses fills begun before now
        self._seen_changes += 1

    async def _read_watched(
        self, codec: Codec[T], owner: str, load: Callable[[], Awaitable[T]], item: str | None, checked: bool
    ) -> T:
        """Without a ring: the local copy while no other process committed, else SQL."""
        if self.watch is None:
            return await load()
        if not checked:
            await self.fresh()
        kind = codec.kind
        key = _watched_key(codec, owner, item)
        entry = self.cache.peek(key)
        if entry is not None:
            self.cache.hit(kind)
            return _value(codec, entry.value)
        self.cache.miss(kind)
        counter = self.cache.snapshot()
        value = await load()
        if codec.kept_encoded:
            data = codec.encode(value)
            self._keep(key, kind, owner, data, len(data), "", counter)
        else:  # nothing to encode for: no ring here
            self._keep(key, kind, owner, value, codec.encoded_size(value), "", counter)
        return value

    async def cached(self, codec: Codec[T], owners: Iterable[str]) -> dict[str, T]:
        """Without a ring, on SQLite: the owners' values this process's cache holds fresh, without reading
        below (an owner missing from the answer is simply not cached). Empty otherwise: a ring's values
        are validated one owner at a time (`read`), and other backends cache nothing."""
        if self.ring is not None or self.watch is None:
            return {}
        await self.fresh()
        # no await from here on: nothing another process commits after the check above is missed
        found: dict[str, T] = {}
        prefix = _watched_key(codec, "", None)  # an owner's key is this + the owner (a login's contacts)
        peek = self.cache.peek
        asked = 0
        for owner in owners:
            asked += 1
            entry = peek(prefix + owner)
            if entry is not None:
                found[owner] = _value(codec, entry.value)
        self.cache.hit(codec.kind, len(found))
        self.cache.miss(codec.kind, asked - len(found))
        return found

    def _keep(self, key: str, kind: str, owner: str, value: Any, size: int, token: str, counter: int) -> None:
        group = _group(kind, owner)
        self.cache.put(key, kind, key if group == key else group, value, size, token=token, snapshot=counter)

    # -- write path ---------------------------------------------------------------------------------------

    async def invalidate(self, codecs: Sequence[Codec[Any]], owner: str) -> None:
        """After a SQL write (committed or not: its outcome may be unknown): drop the owner's values of
        these kinds here, in the ring, and on every node. Never raises: SQL has the write already."""
        kinds = [codec.kind for codec in codecs]
        for kind in kinds:
            self.cache.invalidate(_group(kind, owner))
        if self.ring is None:
            return
        message_id = secrets.token_hex(8)

        def message(at: list[str]) -> bytes:
            text = {"id": message_id, "node": self.node_id, "owner": owner, "kinds": kinds, "at": at}
            return json.dumps(text).encode()

        await self.ring.invalidate(kinds, owner, _value_keys(self.ring, kinds, owner), message)

    async def _listen(self, instance: Instance) -> None:
        """Invalidations published on one instance (each node subscribes to every instance)."""
        assert self.ring is not None
        interval = self.ring.settings.health_interval
        while True:
            if not instance.live:
                await asyncio.sleep(interval)
                continue
            pubsub = instance.control.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.ring.keys.invalidations)
                while instance.live:
                    message = await pubsub.get_message(timeout=interval)
                    if message is not None:
                        await self.on_invalidation(message["data"])
            except REDIS_ERRORS as exc:
                log.debug("invalidations from %s: %s", instance.url, exc)
                await asyncio.sleep(interval)
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2

    async def on_invalidation(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            message_id, node, owner = str(message["id"]), str(message["node"]), str(message["owner"])
            kinds = [str(kind) for kind in message["kinds"] if kind in _CODECS]
            at = {str(url) for url in message["at"]}
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring a malformed invalidation: %s", exc)
            return
        if node == self.node_id or message_id in self._seen:
            return
        self._seen[message_id] = None
        while len(self._seen) > _SEEN_MESSAGES:
            self._seen.popitem(last=False)
        for kind in kinds:
            self.cache.invalidate(_group(kind, owner))
        if self.ring is None:
            return
        missed = [instance for instance in self.ring.live if instance.url not in at]
        if missed:  # live for us, not for the writer: fence the owner's values there too
            await self.ring.invalidate(kinds, owner, _value_keys(self.ring, kinds, owner), None, only=missed)


def _value(codec: Codec[T], kept: Any) -> T:
    """A cached value as the cache keeps it (see `Codec.kept_encoded`), as read."""
    return codec.decode(kept) if codec.kept_encoded else kept


def _watched_key(codec: Codec[Any], owner: str, item: str | None) -> str:
    """The cache key of a value kept without a ring (one owner's value, or one item of it)."""
    base = f"{codec.kind}.v{codec.version}:{owner}"
    return base if item is None else f"{base}:{item}"


def _value_keys(ring: Ring, kinds: Sequence[str], owner: str) -> list[str]:
    return [ring.keys.key(kind, _CODECS[kind].version, owner) for kind in kinds]
