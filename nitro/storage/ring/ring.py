"""The ring: ketama (uhashring) over the live instances, one pipeline per instance per request.

All keys of one owner are read from the instance the owner hashes to, so an owner's generation keys and
values are checked and written together by one Lua script (`fill`); writes renew the generation on every
live instance (`invalidate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from uhashring import HashRing

from nitro.config import RedisSection
from nitro.storage.ring.instance import REDIS_ERRORS, Instance, RingUnavailable
from nitro.storage.ring.keys import KeySpace

log = logging.getLogger(__name__)

NO_GENERATION = "-"  # the generation of an owner whose generation key is absent

# Store the value only if the instance is still in the epoch and the owner in the generation the
# reader saw before reading SQL: a slow reader never writes an old value over a newer invalidation.
_FILL = """
if redis.call('GET', KEYS[1]) == ARGV[1] and (redis.call('GET', KEYS[2]) or '-') == ARGV[2] then
  redis.call('SET', KEYS[3], ARGV[2] .. '\\n' .. ARGV[3], 'PX', ARGV[4])
  return 1
end
return 0
"""
# A new random generation for each kind (so an old token never comes back), and the values deleted.
_INVALIDATE = """
local kinds = tonumber(ARGV[3])
for i = 1, #KEYS do
  if i <= kinds then redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2]) else redis.call('DEL', KEYS[i]) end
end
return 1
"""

Operation = Callable[[Any], Any]  # adds commands to a pipeline


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a read found on the owner's instance: the token to validate against, and the value."""

    instance: Instance
    token: str  # "<epoch>|<generation>"
    generation: str
    value: bytes | None  # the stored value if it is of this generation


class Ring:
    """The instances of `[redis]`, their health checks, and the operations the tiers need."""

    def __init__(self, settings: RedisSection) -> None:
        self.settings = settings
        self.keys = KeySpace(settings.prefix)
        self.instances = [Instance(i.url, i.weight, settings, self.keys) for i in settings.instances]
        self.stats: dict[str, dict[str, int]] = {}
        self.listeners: list[Callable[[], None]] = []  # called when the set of live instances changes
        self._hash: HashRing | None = None
        self._health: asyncio.Task[None] | None = None
        for instance in self.instances:
            instance.on_change = self._changed

    # -- membership ---------------------------------------------------------------------------------------

    def _changed(self, _instance: Instance) -> None:
        live = {i.url: {"instance": i, "weight": i.weight} for i in self.instances if i.live}
        self._hash = HashRing(nodes=live, hash_fn="ketama") if live else None
        for listener in list(self.listeners):
            listener()

    @property
    def live(self) -> list[Instance]:
        return [instance for instance in self.instances if instance.live]

    def owner(self, owner: str) -> Instance | None:
        """The instance holding `owner`'s keys, None when no instance is live."""
        ring = self._hash
        if ring is None:
            return None
        instance: Instance = ring.get_node_instance(owner)
        return instance

    async def start(self) -> None:
        """Check every instance once (bounded), then keep checking every health_interval."""
        await self.check_all()
        self._health = asyncio.create_task(self._health_loop(), name="redis-health")

    async def check_all(self) -> None:
        await asyncio.gather(*(instance.check() for instance in self.instances))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval)
            await self.check_all()

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        await asyncio.gather(*(instance.close() for instance in self.instances))

    def count(self, kind: str, what: str) -> None:
        counters = self.stats.setdefault(kind, {"hits": 0, "misses": 0, "errors": 0})
        counters[what] += 1

    # -- cached values ------------------------------------------------------------------------------------

    def _instance(self, owner: str) -> Instance:
        instance = self.owner(owner)
        if instance is None:
            raise RingUnavailable("no redis instance is live")
        return instance

    async def read(self, kind: str, owner: str, value_key: str | None) -> Snapshot:
        """The owner's current token for `kind` and (if `value_key`) the value stored under it, in one
        round trip; RingUnavailable if the owner's instance is out, fails or is not admitted."""
        instance = self._instance(owner)
        names = [self.keys.epoch, self.keys.generation(kind, owner)]
        if value_key is not None:
            names.append(value_key)
        found = await instance.call(lambda client: client.mget(names))
        if found[0] is None:  # being flushed by some node, or not admitted yet
            raise RingUnavailable(f"redis {instance.url} has no epoch")
        epoch = found[0].decode()
        generation = found[1].decode() if found[1] is not None else NO_GENERATION
        value: bytes | None = None
        if value_key is not None and found[2] is not None:
            stored_generation, _, data = found[2].partition(b"\n")
            if stored_generation.decode() == generation:
                value = data
        return Snapshot(instance, f"{epoch}|{generation}", generation, value)

    async def fill(self, snapshot: Snapshot, kind: str, owner: str, value_key: str, data: bytes) -> bool:
        """Store `data` if nothing changed since `snapshot` (compare-and-set); errors are ignored."""
        epoch = snapshot.token.rsplit("|", 1)[0]
        names = [self.keys.epoch, self.keys.generation(kind, owner), value_key]
        ttl = str(int(self.settings.value_ttl * 1000))
        try:
            stored = await snapshot.instance.call(
                lambda client: client.eval(_FILL, 3, *names, epoch, snapshot.generation, data, ttl)
            )
        except RingUnavailable:
            return False
        return bool(stored)

    async def invalidate(
        self,
        kinds: Sequence[str],
        owner: str,
        value_keys: Sequence[str],
        message: Callable[[list[str]], bytes] | None,
        *,
        only: Sequence[Instance] | None = None,
    ) -> list[str]:
        """After a SQL write: a new generation for `kinds` and the values deleted on every live instance
        (or those in `only`), then `message(urls written)` published on every live instance.

        Every instance, not just the owner's: when the owner moves to another instance (one goes out),
        that instance's generation is current too, so an old value it kept from an earlier time never
        matches. An instance that cannot be written is taken out at once, to be flushed before it is
        used again. Returns the urls of the instances written.
        """
        generation = secrets.token_hex(8)
        ttl = str(int(self.settings.generation_ttl * 1000))
        names = [*(self.keys.generation(kind, owner) for kind in kinds), *value_keys]

        async def one(instance: Instance) -> str | None:
            try:
                await instance.call(
                    lambda client: client.eval(_INVALIDATE, len(names), *names, generation, ttl, len(kinds))
                )
            except RingUnavailable:
                log.warning("invalidation for %s not written to %s: taking it out", owner, instance.url)
                instance.take_out()
                return None
            return instance.url

        targets = self.live if only is None else only
        done = [url for url in await asyncio.gather(*(one(i) for i in targets)) if url is not None]
        if message is not None:
            await self.publish(message(done))
        return done

    async def publish(self, message: bytes) -> None:
        async def one(instance: Instance) -> None:
            with contextlib.suppress(RingUnavailable):
                await instance.call(lambda client: client.publish(self.keys.invalidations, message))

        await asyncio.gather(*(one(instance) for instance in self.live))

    # -- batches: one pipeline per instance ---------------------------------------------------------------

    async def pipelines(self, operations: Sequence[tuple[str, Operation]]) -> list[Any]:
        """Run each (owner, operation) on its owner's instance: operations grouped by instance, one
        pipeline each, all instances at once. Returns one result per operation: the last command's
        reply, the command's error (e.g. a ResponseError for a key of another type), or a
        RingUnavailable for an instance that is out or failed."""
        grouped: dict[Instance | None, list[int]] = defaultdict(list)
        for index, (owner, _operation) in enumerate(operations):
            grouped[self.owner(owner)].append(index)
        results: list[Any] = [RingUnavailable("no redis instance is live")] * len(operations)

        async def run(instance: Instance, indexes: list[int]) -> None:
            async def execute(client: redis.Redis) -> list[Any]:
                pipe = client.pipeline(transaction=False)
                ends = []
                for index in indexes:
                    operations[index][1](pipe)
                    ends.append(len(pipe.command_stack) - 1)
                replies = await pipe.execute(raise_on_error=False)  # a bad key is its own caller's problem
                return [replies[end] for end in ends]

            try:
                replies = await instance.call(execute)
            except RingUnavailable as exc:
                replies = [exc] * len(indexes)
            for index, reply in zip(indexes, replies, strict=True):
                results[index] = reply

        await asyncio.gather(*(run(i, idx) for i, idx in grouped.items() if i is not None))
        return results

    async def get_many(self, items: Sequence[tuple[str, str]]) -> list[bytes | None]:
        """Values of (owner, key) pairs; None for a missing key or an unreachable instance."""
        replies = await self.pipelines([(owner, command("GET", key)) for owner, key in items])
        return [reply if isinstance(reply, bytes) else None for reply in replies]

    async def set_many(self, items: Sequence[tuple[str, str, bytes]], ttl: float) -> int:
        """Store (owner, key, value) triples with a TTL; returns how many were stored."""
        px = int(ttl * 1000)
        replies = await self.pipelines(
            [(owner, command("SET", key, value, "PX", px)) for owner, key, value in items]
        )
        return sum(1 for reply in replies if reply is True)


def command(*args: Any) -> Operation:
    """An operation adding one raw command to a pipeline (for `pipelines`)."""
    return lambda pipe: pipe.execute_command(*args)


__all__ = ["REDIS_ERRORS", "Instance", "Ring", "RingUnavailable", "Snapshot"]
