"""Logouts' last-activity writes in batches: the upserts queued over a few milliseconds are committed in one
transaction on a SQLite file's writing connection (one checkout and three trips to its thread for the batch,
where each logout made a checkout and a trip of its own).

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
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from nitro.storage.errors import NoSuchAccount
from nitro.storage.models import LastActivity
from nitro.storage.protocols import LastActivityStore
from nitro.storage.sql_userdata import last_activity_values

log = logging.getLogger(__name__)

BATCH_DELAY = 0.005  # seconds a first queued write waits for others to join its batch
BATCH_MAX = 1000  # users per transaction
FLUSH_DEADLINE = 5.0  # seconds the flush at close keeps retrying a failing database
RETRY_FIRST = 0.05  # seconds before the flush's first retry; doubled each time


_Entry = tuple[str, LastActivity, "asyncio.Future[None]"]  # a user, its activity, what its callers await


class ManyLastActivities(LastActivityStore, Protocol):
    async def set_many(self, activities: Sequence[tuple[str, LastActivity]]) -> frozenset[str]:
        """Write each user's activity in one transaction; the usernames without an account."""
        ...


class BatchedLastActivity:
    """LastActivityStore whose writes are queued and committed in batches by `run`."""

    def __init__(self, store: ManyLastActivities) -> None:
        self._store = store
        # username → its newest activity not yet written, and the future its callers wait for
        self._queued: dict[str, tuple[LastActivity, asyncio.Future[None]]] = {}
        self._writing: dict[str, LastActivity] = {}  # the batch being committed
        self._wakeup = asyncio.Event()
        self._running = False  # `run` takes the queue (else a write goes straight to the store)
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
        """Commit batches until cancelled; then write what is queued (see `flush`)."""
        flight: asyncio.Future[None] | None = None
        self._running = True
        try:
            while True:
                await self._wakeup.wait()
                if len(self._queued) < BATCH_MAX:
                    await asyncio.sleep(BATCH_DELAY)  # let a batch gather
                flight = asyncio.ensure_future(self._commit(self._take()))
                await asyncio.shield(flight)  # a close lets the commit in progress finish
                flight = None
        except asyncio.CancelledError:
            if flight is not None:
                await flight
            await self.flush()
            raise
        finally:
            self._running = False

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
        """One transaction for `batch`; its callers settled if it committed, else the error."""
        try:
            missing = await self._store.set_many([(name, activity) for name, activity, _ in batch])
        except Exception as exc:
            return exc
        finally:
            self._writing = {}
        self.batches += 1
        for name, _, written in batch:
            _settle(written, NoSuchAccount(name) if name in missing else None)
        return None


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
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
