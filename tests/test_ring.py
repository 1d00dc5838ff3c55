"""The Redis ring on three real redis-servers: ketama placement, one pipeline per instance, instances
taken out when they stop answering, and flushed (fenced) before they rejoin."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from conftest import wait_for
from redis_servers import RedisServer, redis_servers

from nitro.config import ConfigError, RedisInstance, RedisSection, parse_config
from nitro.storage.ring.instance import Instance
from nitro.storage.ring.keys import KeySpace
from nitro.storage.ring.ring import Ring, RingUnavailable

__all__ = ["redis_servers"]

OWNERS = [f"user{i}" for i in range(3000)]
keys = KeySpace()  # the default prefix, as Ring(settings(...)) uses
FAST = {"health_interval": 0.1, "health_timeout": 0.3, "failures_before_out": 2, "socket_timeout": 0.3}


def instance_of(ring: Ring, server: RedisServer) -> tuple[Instance, str]:
    """The ring's instance for `server`, and an owner whose keys live there."""
    instance = next(i for i in ring.instances if i.url == server.url)
    return instance, next(o for o in OWNERS if ring.owner(o) is instance)


def settings(
    servers: list[RedisServer], *, weights: tuple[int, ...] = (), **overrides: float
) -> RedisSection:
    instances = tuple(
        RedisInstance(server.url, weights[i] if weights else 1) for i, server in enumerate(servers)
    )
    values: dict[str, float] = {**FAST, **overrides}
    return RedisSection(
        instances=instances,
        health_interval=values["health_interval"],
        health_timeout=values["health_timeout"],
        failures_before_out=int(values["failures_before_out"]),
        socket_timeout=values["socket_timeout"],
    )


@pytest.fixture
async def ring(redis_servers: list[RedisServer]) -> AsyncIterator[Ring]:
    started = Ring(settings(redis_servers))
    await started.start()
    yield started
    await started.close()


async def direct(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


async def test_ketama_spreads_owners_over_every_instance(ring: Ring) -> None:
    assert all(instance.live for instance in ring.instances)
    shares = Counter(ring.owner(owner).url for owner in OWNERS)  # type: ignore[union-attr]  # all instances are live
    assert set(shares) == {instance.url for instance in ring.instances}
    assert all(count > len(OWNERS) * 0.2 for count in shares.values()), shares


async def test_weights_give_an_instance_a_bigger_share(redis_servers: list[RedisServer]) -> None:
    ring = Ring(settings(redis_servers, weights=(1, 1, 4)))
    await ring.start()
    try:
        shares = Counter(ring.owner(owner).url for owner in OWNERS)  # type: ignore[union-attr]  # all instances are live
        heavy = shares[redis_servers[2].url]
        assert heavy > shares[redis_servers[0].url] * 2
        assert heavy > shares[redis_servers[1].url] * 2
    finally:
        await ring.close()


async def test_an_instance_going_out_moves_only_its_own_owners(ring: Ring) -> None:
    before = {owner: ring.owner(owner) for owner in OWNERS}
    gone = ring.instances[0]
    gone.take_out()
    for owner in OWNERS:
        now = ring.owner(owner)
        assert now is not gone
        if before[owner] is not gone:
            assert now is before[owner]


async def test_set_many_and_get_many_send_one_pipeline_per_instance(redis_servers: list[RedisServer]) -> None:
    ring = Ring(settings(redis_servers, health_interval=3600))  # no health checks in the counts
    await ring.start()
    observers = [await direct(server) for server in redis_servers]
    try:
        items = [(owner, keys.key("test", 1, owner), owner.encode()) for owner in OWNERS[:300]]
        per_instance = Counter(ring.owner(owner).url for owner, _, _ in items)  # type: ignore[union-attr]  # all instances are live
        assert min(per_instance.values()) >= 50
        before = [int((await client.info("stats"))["total_reads_processed"]) for client in observers]
        assert await ring.set_many(items, ttl=60) == len(items)
        values = await ring.get_many([(owner, key) for owner, key, _ in items])
        after = [int((await client.info("stats"))["total_reads_processed"]) for client in observers]
        assert values == [value for _, _, value in items]
        # 2 requests of >= 50 commands per instance: a few socket reads each (pipelines, our INFO), not 100+.
        for start, end in zip(before, after, strict=True):
            assert end - start <= 12, (before, after)
    finally:
        for client in observers:
            await client.aclose()
        await ring.close()


async def test_values_land_on_the_owners_instance(ring: Ring, redis_servers: list[RedisServer]) -> None:
    owner = "alice"
    key = keys.key("test", 1, owner)
    await ring.set_many([(owner, key, b"x")], ttl=60)
    holder = ring.owner(owner)
    assert holder is not None
    for server in redis_servers:
        client = await direct(server)
        try:
            assert (await client.get(key) is not None) == (server.url == holder.url)
        finally:
            await client.aclose()


@pytest.mark.fault
async def test_a_killed_instance_is_out_within_bounded_time_and_its_keys_move(
    ring: Ring, redis_servers: list[RedisServer]
) -> None:
    victim_server = redis_servers[1]
    victim, owner = instance_of(ring, victim_server)
    victim_server.kill()
    await wait_for(lambda: not victim.live, timeout=10)
    assert ring.owner(owner) is not None
    assert ring.owner(owner) is not victim
    key = keys.key("test", 1, owner)
    assert await ring.set_many([(owner, key, b"moved")], ttl=60) == 1
    assert await ring.get_many([(owner, key)]) == [b"moved"]


@pytest.mark.fault
async def test_a_paused_instance_comes_back_flushed_with_a_new_epoch(
    ring: Ring, redis_servers: list[RedisServer]
) -> None:
    server = redis_servers[0]
    instance, owner = instance_of(ring, server)
    ours = keys.key("test", 1, owner)
    await ring.set_many([(owner, ours, b"before")], ttl=60)
    client = await direct(server)
    try:
        await client.set("someone-else", b"kept")  # not our namespace: never flushed
        epoch = await client.get(keys.epoch)
        server.signal(signal.SIGSTOP)
        await wait_for(lambda: not instance.live, timeout=10)
        server.signal(signal.SIGCONT)
        await wait_for(lambda: instance.live, timeout=10)
        assert await client.get(ours) is None
        assert await client.get("someone-else") == b"kept"
        new_epoch = await client.get(keys.epoch)
        assert new_epoch is not None
        assert new_epoch != epoch
    finally:
        await client.aclose()


@pytest.mark.fault
async def test_a_restart_from_a_stale_snapshot_is_refused_then_flushed(
    redis_servers: list[RedisServer],
) -> None:
    ring = Ring(settings(redis_servers, health_interval=3600))  # no health loop: the fence alone acts
    await ring.start()
    try:
        server = redis_servers[2]
        instance, owner = instance_of(ring, server)
        key = keys.key("test", 1, owner)
        await ring.set_many([(owner, key, b"old")], ttl=600)
        server.snapshot()  # dump.rdb holds "old" and the epoch of this process
        await ring.set_many([(owner, key, b"new")], ttl=600)
        server.kill()
        server.start()  # loads the snapshot: "old" is back, under the old epoch
        for _attempt in range(2):  # the pooled connection is broken; its replacement sees another run_id
            with pytest.raises(RingUnavailable):
                await ring.read("test", owner, key)
        assert not instance.live
        assert await ring.get_many([(owner, key)]) != [b"old"]
        await ring.check_all()  # the health check admits it again, flushed
        assert instance.live
        assert ring.owner(owner) is instance
        assert await ring.get_many([(owner, key)]) == [None]
    finally:
        await ring.close()


async def test_an_instance_down_at_start_joins_when_it_comes_up(redis_servers: list[RedisServer]) -> None:
    redis_servers[0].kill()
    ring = Ring(settings(redis_servers))
    await ring.start()
    try:
        assert [i.live for i in ring.instances] == [False, True, True]
        changes: list[int] = []
        ring.listeners.append(lambda: changes.append(len(ring.live)))
        redis_servers[0].start()
        await wait_for(lambda: ring.instances[0].live, timeout=10)
        assert changes[-1] == 3
    finally:
        await ring.close()


async def test_no_live_instance_means_ring_unavailable(ring: Ring) -> None:
    for instance in ring.instances:
        instance.take_out()
    assert ring.owner("alice") is None
    with pytest.raises(RingUnavailable):
        await ring.read("roster", "alice", None)
    assert await ring.get_many([("alice", "k")]) == [None]
    await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("redis_table", "message"),
    [
        ({"instances": ["localhost:6379"]}, "[redis].instances[0]: url must be"),
        ({"instances": [{"url": "redis://a/0", "weight": 0}]}, "weight must be at least 1"),
        ({"instances": [{"url": "redis://a/0", "wieght": 2}]}, "unknown key 'wieght'"),
        ({"instances": ["redis://a/0", "redis://a/0"]}, "listed twice"),
        ({"instances": [6379]}, "expected a table"),
        ({"health_timeout": 0}, "[redis].health_timeout must be positive"),
        ({"failures_before_out": 0}, "failures_before_out must be at least 1"),
        ({"generation_ttl": 600}, "generation_ttl must exceed"),
        ({"prefix": "a:b"}, "[redis].prefix must be"),
        ({"prefix": ""}, "[redis].prefix must be"),
    ],
)
def test_redis_config_mistakes_name_the_key(redis_table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"redis": redis_table})
    assert message in str(raised.value)


def test_redis_instances_are_urls_or_tables_with_weights() -> None:
    config = parse_config({"redis": {"instances": ["redis://a:1/0", {"url": "redis://b:2/0", "weight": 3}]}})
    assert config.redis.instances == (RedisInstance("redis://a:1/0", 1), RedisInstance("redis://b:2/0", 3))


async def test_a_slow_call_fails_alone_without_taking_the_instance_out(ring: Ring) -> None:
    instance = ring.instances[0]
    for _ in range(3):  # more than failures_before_out: calls do not count, only health checks do
        with pytest.raises(RingUnavailable):
            await instance.call(lambda client: client.blpop(["nitro-test-empty"], timeout=2))
    assert instance.live
    await ring.check_all()
    assert instance.live
    assert instance.failures == 0
