"""Paced garbage collection: young collections on a clock instead of only on CPython's allocation count.

CPython 3.11 starts a young collection when allocations minus deallocations pass `threshold0`. In a login
storm many objects of older generations die (negotiation state promoted while clients queued), each
death lowers that count, and the young generation grows far past the threshold: 50-110 thousand objects,
50-150 ms per collection. Collecting the young generation every `young_interval` seconds bounds it by
what the server keeps alive in that time; the middle generation is collected every `middle_every` young
collections, so it holds only their survivors. Full collections walk everything that is not frozen (all
sessions): they run at most every `full_interval` seconds and only when the old generation grew by a
quarter since the last one (CPython's own rule), so memory stays bounded without a full pause per burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Iterator

from nitro.config import GCSection

log = logging.getLogger(__name__)

FULL_GROWTH = 1.25  # the old generation grown by a quarter since the last full collection (gcmodule.c)
FULL_MINIMUM = 10_000  # objects below which a full collection is not worth its pause
NEVER = 1_000_000_000  # CPython's threshold2 while paced: its own full collections would come mid-burst


class GCPacer:
    """Collects generation 0 on every tick, 1 every `middle_every` ticks, 2 as `full_due` says."""

    def __init__(self, section: GCSection, now: float) -> None:
        self.section = section
        self.ticks = 0
        self.next_full_check = now + section.full_interval
        self.old_after_full = len(gc.get_objects(2))  # what the last full collection left (start-up)

    def tick(self, now: float) -> int:
        """One turn: the generation it collected."""
        self.ticks += 1
        if now >= self.next_full_check:
            self.next_full_check = now + self.section.full_interval
            if self.full_due():
                gc.collect(2)
                self.old_after_full = len(gc.get_objects(2))
                return 2
        if self.ticks % self.section.middle_every == 0:
            gc.collect(1)
            return 1
        gc.collect(0)
        return 0

    def full_due(self) -> bool:
        """The old generation (frozen objects aside) grew by a quarter since the last full collection."""
        old = len(gc.get_objects(2))
        return old >= FULL_MINIMUM and old >= FULL_GROWTH * self.old_after_full


async def _pace(pacer: GCPacer, interval: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        pacer.tick(loop.time())


@contextlib.asynccontextmanager
async def paced_gc(section: GCSection) -> AsyncIterator[GCPacer | None]:
    """Pace collections for the life of the block; nothing when `young_interval` is 0. While paced, only
    the pacer starts full collections: CPython would start one whenever a threshold0 backstop collection
    finds `threshold2` middle ones done (every 30 s here), in the middle of a login storm."""
    if section.young_interval <= 0:
        yield None
        return
    loop = asyncio.get_running_loop()
    pacer = GCPacer(section, loop.time())
    previous = gc.get_threshold()
    gc.set_threshold(previous[0], previous[1], NEVER)
    task = loop.create_task(_pace(pacer, section.young_interval), name="gc-pacer")
    try:
        yield pacer
    finally:
        gc.set_threshold(*previous)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.contextmanager
def without_full_collections(section: GCSection) -> Iterator[None]:
    """The configured young thresholds and no full collection started by CPython for the life of the block:
    around the server's tuned and paced collections, so that its shutdown (after the pacer has stopped) runs
    without one. Closing thousands of sessions allocates enough for CPython to start a full collection over
    every session (~0.3 s after a 4,000-login storm) while clients wait for their `<system-shutdown/>`;
    after the block, CPython's own rule applies again."""
    previous = gc.get_threshold()
    gc.set_threshold(section.threshold0, section.threshold1, NEVER)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
