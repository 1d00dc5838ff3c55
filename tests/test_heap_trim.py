"""Freed C memory goes back to the system (nitro/observe/heap.py): the lever behind idle sessions' RSS."""

from __future__ import annotations

import asyncio

import pytest

from nitro.observe import heap

pytestmark = pytest.mark.skipif(heap._TRIM is None, reason="no glibc malloc_trim here")


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_freed_heap_pages_go_back_to_the_system() -> None:
    # 64 KiB blocks from the heap (below glibc's mmap threshold), each followed by a small block that stays,
    # as parsers freed between live sessions' allocations: free() alone keeps those holes in the process.
    pairs = [(bytearray(65536), bytearray(2048)) for _ in range(800)]
    for block, _kept in pairs:
        block[::4096] = b"x" * 16  # touch every page
    kept = [small for _block, small in pairs]
    before = _rss_kib()
    del pairs, block
    freed_alone = before - _rss_kib()
    assert heap.trim_now()
    returned = before - _rss_kib()
    assert returned - freed_alone > 30_000, "50 MB of holes freed, at least 30 MB returned by the trim"
    assert len(kept) == 800


async def test_trims_come_once_per_wave_of_releases() -> None:
    loop = asyncio.get_running_loop()
    heap.trim_soon()
    heap.trim_soon()  # the second release in the same wave schedules nothing more
    assert heap._scheduled == {loop}
    await asyncio.sleep(heap.TRIM_DELAY + 0.2)
    assert heap._scheduled == set()
