"""Logouts' last-activity writes in batches: the upserts queued while the previous batch committed are
committed in one transaction on a SQLite file's writing connection (one checkout and three trips to its thread
for the batch, where each logout made a checkout and a trip of its own; a batch of one is the single upsert).

`set` returns once its batch committed (as the write it replaces: the value is on disk, or the caller hears
why not); a newer value for a user still queued replaces the older, and both callers return with the newer's
commit. `get` answers from the queue (or the batch being written) before SQL, so a query right after a
logout sees it. At close, what is queued is written, retried for at most FLUSH_DEADLINE seconds while the
database fails; what still could not be written is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from nitro.storage.errors import NoSuchAccount, StorageUnavailable
from nitro.storage.models import LastActivity
from nitro.storage.protocols import LastActivityStore
from nitro.storage.sql_userdata import last_activity_values

log = logging.getLogger(__name__)

# Seconds a first queued write waits for others to join its batch. 0: a batch is what was queued while
# the previous one committed (a window as long as a commit). A timer's wake-up cost an idle server more CPU
# than batching saved (one logout at a time on a real file: ~600 us of CPU per write with 5 ms, ~350 without,
# as before batching); under load, writes queue behind a commit in flight anyway.
BATCH_DELAY = 0.0
BATCH_MAX = 1000  # users per transaction
FLUSH_DEADLINE = 5.0  # seconds the flush at close keeps retrying a failing database
RETRY_FIRST = 0.05  # seconds before the flush's first retry; doubled each time


_Entry = tuple[str, LastActivity, "asyncio.Future[None]"]  # a user, its activity, what its callers await


class ManyLastActivities(LastActivityStore, Protocol):
    async def set_many(self, activities: Sequence[tuple[str, LastActivity]]) -> frozenset[str]:
        """Write each user's activity in one transaction; the usernames without an account."""
        ...


class BatchedLastActivity:
    """LastActivityStore whose writes are queued and committed in batches by `run` (until `stop`)."""

    def __init__(self, store: ManyLastActivities) -> None:
        self._store = store
        # username → its newest activity not yet written, and the future its callers wait for
        self._queued: dict[str, tuple[LastActivity, asyncio.Future[None]]] = {}
        self._writing: dict[str, LastActivity] = {}  # the batch being committed
        self._wakeup = asyncio.Event()
        self._running = False  # `run` takes the queue (else a write goes straight to the store)
        self._stopping = False
        self._pause: asyncio.Future[None] | None = None  # while a batch gathers (`_gather`)
        self.batches = 0  # committed (for tests)

    async def get(self, username: str) -> LastActivity | None:
        queued = self._queued.get(username)
        if queued is not None:
            return queued[0]
        writing = self._writing.get(username)
        if writing is not None:
            return writing
        return await self._store.get(username)

    async def set(self, username: str, activity: LastActivity) -> None:
        last_activity_values(username, activity)  # a bad username or time is refused at once, not batched
        if not self._running:  # closed (a logout after the flush): a write of its own
            await self._store.set(username, activity)
            return
        queued = self._queued.get(username)
        if queued is None:
            written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        else:
            written = queued[1]  # replaced: the older value's callers return with the newer's commit
        self._queued[username] = (activity, written)
        self._wakeup.set()
        await asyncio.shield(written)  # a caller that gives up leaves the write queued

    async def run(self) -> None:
        """Commit batches until `stop`; then write what is queued (see `flush`)."""
        self._running = True
        try:
            while not self._stopping:
                await self._wakeup.wait()
                if BATCH_DELAY > 0 and len(self._queued) < BATCH_MAX and not self._stopping:
                    await self._gather()
                if self._queued and not self._stopping:  # once stopping, `flush` writes them (retrying)
                    await self._commit(self._take())
            await self.flush()
        finally:
            self._running = False
            for _, _, written in self._take_all():  # cancelled: nothing will write these any more
                _settle(written, StorageUnavailable("the last-activity writer stopped"))

    async def _gather(self) -> None:
        """BATCH_DELAY for a batch to gather (as asyncio.sleep, but `stop` ends it at once)."""
        loop = asyncio.get_running_loop()
        self._pause = loop.create_future()
        timer = loop.call_later(BATCH_DELAY, _wake, self._pause)
        try:
            await self._pause
        finally:
            timer.cancel()
            self._pause = None

    def stop(self) -> None:
        """`run` ends once what is queued is written (or given up)."""
        self._stopping = True
        self._wakeup.set()
        if self._pause is not None:
            _wake(self._pause)

    async def flush(self) -> None:
        """Write what is queued, retrying a failing database for at most FLUSH_DEADLINE seconds; then log
        how many users' last activity could not be written (their callers hear why)."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + FLUSH_DEADLINE
        delay = RETRY_FIRST
        while self._queued:
            batch = self._take()
            error = await self._write(batch)
            if error is None:
                continue
            if loop.time() + delay > give_up_at:
                lost = batch + self._take_all()
                log.error("last activity of %d users could not be written: %s", len(lost), error)
                for _, _, written in lost:
                    _settle(written, error)
                return
            log.warning(
                "last activity of %d users not written, retrying in %.2f s: %s", len(batch), delay, error
            )
            for name, activity, written in batch:  # back in the queue, unless a newer value is there
                self._queued.setdefault(name, (activity, written))
            await asyncio.sleep(delay)
            delay *= 2

    def _take(self) -> list[_Entry]:
        names = list(itertools.islice(self._queued, BATCH_MAX))
        batch = [(name, *self._queued.pop(name)) for name in names]
        self._writing = {name: activity for name, activity, _ in batch}
        if not self._queued:
            self._wakeup.clear()
        return batch

    def _take_all(self) -> list[_Entry]:
        batch = [(name, activity, written) for name, (activity, written) in self._queued.items()]
        self._queued.clear()
        self._wakeup.clear()
        return batch

    async def _commit(self, batch: list[_Entry]) -> None:
        """One transaction for `batch`; if it fails, its callers hear why (as from a write of their own)."""
        error = await self._write(batch)
        if error is not None:
            for _, _, written in batch:
                _settle(written, error)

    async def _write(self, batch: list[_Entry]) -> Exception | None:
        """One transaction for `batch`; its callers settled if it committed, else the error. A batch of one
        is the single upsert (one trip to the writing connection's thread, where a transaction makes three:
        with logouts far apart, batches are of one)."""
        missing: Collection[str] = ()
        try:
            if len(batch) == 1:
                name, activity, _ = batch[0]
                try:
                    await self._store.set(name, activity)
                except NoSuchAccount:
                    missing = (name,)
            elif batch:
                missing = await self._store.set_many([(name, activity) for name, activity, _ in batch])
        except Exception as exc:
            return exc
        except BaseException:  # cancelled mid-write: its callers are told it may not have been written
            for _, _, written in batch:
                _settle(written, StorageUnavailable("the last-activity writer stopped"))
            raise
        finally:
            self._writing = {}
        self.batches += 1
        for name, _, written in batch:
            _settle(written, NoSuchAccount(name) if name in missing else None)
        return None


def _wake(pause: asyncio.Future[None]) -> None:
    if not pause.done():
        pause.set_result(None)


def _settle(written: asyncio.Future[None], error: Exception | None) -> None:
    if written.done():
        return
    if error is None:
        written.set_result(None)
    else:
        written.set_exception(error)
        written.exception()  # retrieved: callers that gave up are not "never retrieved"


@asynccontextmanager
async def batched_last_activity(store: ManyLastActivities) -> AsyncIterator[BatchedLastActivity]:
    """The batching store, its writer running until the block ends (then what is queued is written)."""
    batched = BatchedLastActivity(store)
    writer = asyncio.create_task(batched.run(), name="last activity writer")
    try:
        yield batched
    finally:
        batched.stop()
        try:
            await asyncio.shield(writer)  # bounded: the flush gives up after FLUSH_DEADLINE
        except asyncio.CancelledError:
            writer.cancel()  # we were cancelled while waiting: the writer too (it settles its callers)
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            raise
