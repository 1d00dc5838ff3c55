"""The asynchronous archive writer: archive rows leave the delivery path and are committed in batches (one
transaction per batch, as MongooseIM's async MAM writer), each row with a future resolved at its commit.

Bounded: past `max_pending` waiting rows, `submit` waits (the sender's stream is not read meanwhile), and
nothing is dropped: a failing batch is retried with backoff until it commits. At shutdown it flushes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from nitro.config import ArchiveSection
from nitro.core.durability import Promise
from nitro.storage.errors import StorageUnavailable
from nitro.storage.models import ArchiveRow
from nitro.storage.protocols import ArchiveStore

log = logging.getLogger(__name__)

RETRY_FIRST = 0.05  # seconds before the first retry of a failed batch; doubled each time
RETRY_MAX = 5.0
FLUSH_DEADLINE = 10.0  # seconds the shutdown flush keeps retrying before it gives up (and says so)
READ_WAIT = 5.0  # seconds a MAM query waits for the user's queued rows before it answers "try again"


class ArchiveWriter:
    """Queues archive rows and commits them in order, a batch at a time."""

    def __init__(self, store: ArchiveStore, settings: Callable[[], ArchiveSection]) -> None:
        self._store = store
        self._settings = settings
        self._waiting: deque[tuple[ArchiveRow, Promise]] = deque()
        self._writing = 0  # rows of the batch being committed
        self._last: dict[str, Promise] = {}  # username → the promise of its latest row not yet committed
        self._wakeup = asyncio.Event()
        # Senders waiting for room, in arrival order; each is woken with one row's room reserved for it
        # (`_admitted` until its row is queued), so a freed batch wakes as many senders as it has room.
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self._admitted = 0
        self._give_up_at: float | None = None
        self._full_since: float | None = None
        self.failing: Exception | None = None  # the last batch failed with this (cleared by a commit)
        self.committed = 0  # rows, and batches, committed so far (for tests and logs)
        self.batches = 0

    @property
    def pending(self) -> int:
        """Rows not yet committed."""
        return len(self._waiting) + self._writing

    async def submit(self, row: ArchiveRow) -> Promise:
        """Queue `row` (waiting while the queue is full, behind the senders already waiting); the future
        is done once the row is committed."""
        if self._room_waiters or self.pending + self._admitted >= self._settings().max_pending:
            await self._room_for_one()
        future: Promise = asyncio.get_running_loop().create_future()
        self._waiting.append((row, future))
        self._last[row.username] = future  # forgotten when its batch is settled
        self._wakeup.set()
        return future

    async def _room_for_one(self) -> None:
        """Wait in line until one row's room is reserved for us."""
        if self._full_since is None:
            self._full_since = asyncio.get_running_loop().time()
            log.warning("%d archive rows wait to be written: pausing their senders", self.pending)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._room_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():  # never woken: leave the line
                if waiter in self._room_waiters:
                    self._room_waiters.remove(waiter)
            else:  # woken, then cancelled before queueing: the room goes to the next in line
                self._admitted -= 1
                self._admit()
            raise
        self._admitted -= 1

    def _admit(self) -> None:
        """Wake as many waiting senders as there is room for, first come first."""
        room = self._settings().max_pending - self.pending - self._admitted
        while room > 0 and self._room_waiters:
            waiter = self._room_waiters.popleft()
            if waiter.done():  # cancelled meanwhile
                continue
            waiter.set_result(None)
            self._admitted += 1
            room -= 1

    async def flush(self, username: str) -> None:
        """Wait until every row of `username` queued so far is committed (MAM reads its own writes)."""
        future = self._last.get(username)
        if future is None:
            return
        if self.failing is not None:  # no use waiting: answer at once that the archive is not there
            raise StorageUnavailable(f"the archive cannot be written: {self.failing}")
        await asyncio.wait([future], timeout=READ_WAIT)  # our task cancelled leaves the row's future alone
        if not future.done() or future.cancelled():
            raise StorageUnavailable("the archive's latest messages are not written yet")

    async def run(self) -> None:
        """Commit batches until cancelled; then flush what is left (for at most FLUSH_DEADLINE seconds)."""
        loop = asyncio.get_running_loop()
        flight: asyncio.Task[None] | None = None
        try:
            while True:
                await self._wakeup.wait()
                settings = self._settings()
                if settings.batch_delay > 0 and len(self._waiting) < settings.batch_size:
                    await asyncio.sleep(settings.batch_delay)  # let a batch gather
                flight = loop.create_task(self._commit(self._take(settings.batch_size)))
                await asyncio.shield(flight)  # a shutdown lets the commit in progress finish
                flight = None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self._give_up_at = loop.time() + FLUSH_DEADLINE
            if flight is not None:
                await flight
            while self._waiting:
                await self._commit(self._take(self._settings().batch_size))
            raise

    def _take(self, size: int) -> list[tuple[ArchiveRow, Promise]]:
        batch = [self._waiting.popleft() for _ in range(min(size, len(self._waiting)))]
        self._writing = len(batch)
        if not self._waiting:
            self._wakeup.clear()
        return batch

    async def _commit(self, batch: list[tuple[ArchiveRow, Promise]]) -> None:
        """One transaction for `batch`, retried with backoff until it commits (or the flush deadline)."""
        loop = asyncio.get_running_loop()
        delay = RETRY_FIRST
        rows = [row for row, _ in batch]
        while True:
            try:
                await self._store.append_batch(rows)
                break
            except Exception as exc:
                self.failing = exc
                if self._give_up_at is not None and loop.time() + delay > self._give_up_at:
                    log.error("shutting down: %d archive rows could not be written: %s", len(rows), exc)
                    self._settle(batch, committed=False)
                    return
                log.warning("archive batch of %d rows failed, retrying in %.2f s: %s", len(rows), delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
        self.failing = None
        self.committed += len(rows)
        self.batches += 1
        self._settle(batch, committed=True)

    def _settle(self, batch: list[tuple[ArchiveRow, Promise]], *, committed: bool) -> None:
        last = self._last
        for row, future in batch:
            if last.get(row.username) is future:
                del last[row.username]
            if not future.done():
                if committed:
                    future.set_result(None)
                else:
                    future.cancel()  # never acknowledged as stored (see nitro/c2s/ack_gate.py)
        self._writing = 0
        self._admit()
        if self._full_since is not None and not self._room_waiters:
            waited = asyncio.get_running_loop().time() - self._full_since
            log.warning("archive queue has room again after %.1f s; senders resume", waited)
            self._full_since = None
