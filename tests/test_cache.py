"""The in-process LRU: entry and byte bounds, TTL, group invalidation refusing late fills, counters."""

from __future__ import annotations

from nitro.storage.cache import LruCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def put(cache: LruCache, key: str, value: object = "v", *, size: int = 1, group: str = "g") -> bool:
    return cache.put(key, "roster", group, value, size, token=None, snapshot=cache.snapshot())


def test_least_recently_used_entry_goes_first_past_max_entries() -> None:
    cache = LruCache(max_entries=2, max_bytes=1000, ttl=60)
    put(cache, "a", 1)
    put(cache, "b", 2)
    assert cache.get("a", "roster") == 1  # a is now the most recently used
    put(cache, "c", 3)
    assert cache.get("b", "roster") is None
    assert cache.get("a", "roster") == 1
    assert cache.get("c", "roster") == 3
    assert len(cache) == 2
    assert cache.stats["roster"]["evictions"] == 1


def test_max_bytes_evicts_until_the_total_fits() -> None:
    cache = LruCache(max_entries=100, max_bytes=10, ttl=60)
    put(cache, "a", size=4)
    put(cache, "b", size=4)
    put(cache, "c", size=4)
    assert cache.bytes == 8
    assert cache.peek("a") is None
    assert cache.peek("b") is not None
    assert cache.peek("c") is not None


def test_a_value_bigger_than_max_bytes_is_not_kept() -> None:
    cache = LruCache(max_entries=100, max_bytes=10, ttl=60)
    put(cache, "small", size=5)
    assert not put(cache, "huge", size=11)
    assert cache.peek("huge") is None
    assert cache.peek("small") is not None


def test_entries_expire_after_ttl() -> None:
    clock = Clock()
    cache = LruCache(max_entries=10, max_bytes=100, ttl=5, clock=clock)
    put(cache, "a", 1)
    clock.now = 4.9
    assert cache.get("a", "roster") == 1
    clock.now = 5.0
    assert cache.get("a", "roster") is None
    assert cache.bytes == 0
    assert cache.stats["roster"] == {"hits": 1, "misses": 1, "evictions": 0, "expired": 1}


def test_replacing_a_key_keeps_the_byte_count_right() -> None:
    cache = LruCache(max_entries=10, max_bytes=100, ttl=60)
    put(cache, "a", size=30)
    put(cache, "a", size=10)
    assert cache.bytes == 10
    assert len(cache) == 1


def test_invalidate_drops_the_whole_group_only() -> None:
    cache = LruCache(max_entries=10, max_bytes=100, ttl=60)
    put(cache, "private:alice:1", group="private:alice")
    put(cache, "private:alice:2", group="private:alice")
    put(cache, "private:bob:1", group="private:bob")
    cache.invalidate("private:alice")
    assert cache.peek("private:alice:1") is None
    assert cache.peek("private:alice:2") is None
    assert cache.peek("private:bob:1") is not None
    assert cache.bytes == 1


def test_a_group_shrunk_to_one_key_and_grown_again_still_invalidates_whole() -> None:
    cache = LruCache(max_entries=3, max_bytes=100, ttl=60)
    put(cache, "pep:alice:1", group="pep:alice")
    put(cache, "pep:alice:1", group="pep:alice")  # the same key again: still one
    put(cache, "pep:alice:2", group="pep:alice")
    put(cache, "pep:bob:1", group="pep:bob")
    put(cache, "pep:bob:2", group="pep:bob")  # evicts pep:alice:1, the least recently used
    assert cache.peek("pep:alice:1") is None
    put(cache, "pep:alice:3", group="pep:alice")  # evicts pep:alice:2
    put(cache, "pep:alice:4", group="pep:alice")  # evicts pep:bob:1
    cache.invalidate("pep:alice")
    assert [cache.peek(f"pep:alice:{n}") for n in (2, 3, 4)] == [None, None, None]
    assert cache.peek("pep:bob:2") is not None
    assert len(cache) == 1
    cache.invalidate("pep:bob")
    assert len(cache) == 0
    assert cache.bytes == 0


def test_a_fill_that_began_before_an_invalidation_is_refused() -> None:
    cache = LruCache(max_entries=10, max_bytes=100, ttl=60)
    before = cache.snapshot()  # a reader starts reading SQL …
    cache.invalidate("roster:alice")  # … a write lands meanwhile …
    stored = cache.put("k", "roster", "roster:alice", "old", 1, token=None, snapshot=before)
    assert not stored  # … so the reader's (possibly old) value is not kept
    assert cache.peek("k") is None
    # Another group is not affected, and a fill that began afterwards is kept.
    assert cache.put("j", "roster", "roster:bob", "v", 1, token=None, snapshot=before)
    assert cache.put("k", "roster", "roster:alice", "new", 1, token=None, snapshot=cache.snapshot())


def test_forgotten_invalidations_still_refuse_old_fills() -> None:
    cache = LruCache(max_entries=10, max_bytes=100, ttl=60)
    before = cache.snapshot()
    cache.invalidate("roster:alice")
    for index in range(10_001):  # pushes alice's invalidation out of the remembered ones
        cache.invalidate(f"roster:user{index}")
    assert not cache.put("k", "roster", "roster:alice", "old", 1, token=None, snapshot=before)


def test_clear_refuses_fills_in_progress() -> None:
    cache = LruCache(max_entries=10, max_bytes=100, ttl=60)
    put(cache, "a")
    before = cache.snapshot()
    cache.clear()
    assert len(cache) == 0
    assert cache.bytes == 0
    assert not cache.put("b", "roster", "g", "v", 1, token=None, snapshot=before)


def test_zero_entries_caches_nothing() -> None:
    cache = LruCache(max_entries=0, max_bytes=100, ttl=60)
    assert not put(cache, "a")
    assert len(cache) == 0
