"""Shared reads (nitro/storage/singleflight.py) and fair shares of storage calls (nitro/storage/fair.py):
the first reader runs the load in its own task, joiners wait for its outcome, and neither a joiner's nor the
first reader's cancellation reaches the others; an account's calls beyond its share wait in line."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from nitro.storage.fair import AccountShares
from nitro.storage.singleflight import SingleFlight


class Gate:
    """A load that waits until released, counting how often it ran."""

    def __init__(self, value: int = 7) -> None:
        self.value = value
        self.runs = 0
        self.release = asyncio.Event()

    async def load(self) -> int:
        self.runs += 1
        await self.release.wait()
        return self.value


async def test_a_read_that_does_not_suspend_runs_in_the_readers_task() -> None:
    flights: SingleFlight[object] = SingleFlight()
    reader = asyncio.current_task()

    async def load() -> object:
        return asyncio.current_task()

    assert await flights.read("alice", load) is reader
    assert not flights._reading  # nothing left in flight


async def test_concurrent_reads_share_one_load() -> None:
    flights: SingleFlight[int] = SingleFlight()
    gate = Gate()
    readers = [asyncio.ensure_future(flights.read("alice", gate.load)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.release.set()
    assert await asyncio.gather(*readers) == [7] * 5
    assert gate.runs == 1


async def test_a_cancelled_joiner_leaves_the_read_to_the_others() -> None:
    flights: SingleFlight[int] = SingleFlight()
    gate = Gate()
    first = asyncio.ensure_future(flights.read("alice", gate.load))
    joiner = asyncio.ensure_future(flights.read("alice", gate.load))
    other = asyncio.ensure_future(flights.read("alice", gate.load))
    await asyncio.sleep(0)
    joiner.cancel()
    await asyncio.sleep(0)
    gate.release.set()
    assert await first == 7
    assert await other == 7
    assert joiner.cancelled()
    assert gate.runs == 1


async def test_when_the_first_reader_is_cancelled_the_joiners_read_again() -> None:
    flights: SingleFlight[int] = SingleFlight()
    gate = Gate()
    first = asyncio.ensure_future(flights.read("alice", gate.load))
    joiners = [asyncio.ensure_future(flights.read("alice", gate.load)) for _ in range(3)]
    await asyncio.sleep(0)
    first.cancel()
    for _ in range(10):
        await asyncio.sleep(0)
    gate.release.set()
    assert await asyncio.gather(*joiners) == [7, 7, 7]  # not the first reader's cancellation
    assert gate.runs == 2  # one joiner took the read over; the others joined it
    with pytest.raises(asyncio.CancelledError):
        await first
    assert not flights._reading


async def test_a_failed_read_fails_every_reader_and_is_retrieved() -> None:
    flights: SingleFlight[int] = SingleFlight()
    release = asyncio.Event()
    unretrieved: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))

    async def failing() -> int:
        await release.wait()
        raise LookupError("gone")

    readers = [asyncio.ensure_future(flights.read("alice", failing)) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*readers, return_exceptions=True)
    assert all(isinstance(result, LookupError) for result in results)
    # alone, failing at once or later: raised to its reader, no "exception was never retrieved"
    with pytest.raises(LookupError):
        await flights.read("bob", failing)
    del readers, results
    gc.collect()
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert unretrieved == []


async def test_a_write_makes_later_reads_start_afresh() -> None:
    flights: SingleFlight[int] = SingleFlight()
    old, new = Gate(1), Gate(2)
    before = asyncio.ensure_future(flights.read("alice", old.load))
    await asyncio.sleep(0)
    with flights.writing("alice"):
        after = asyncio.ensure_future(flights.read("alice", new.load))
        await asyncio.sleep(0)
    old.release.set()
    new.release.set()
    assert (await before, await after) == (1, 2)


async def test_an_accounts_calls_beyond_its_share_wait_in_line() -> None:
    shares = AccountShares(2)
    running: list[int] = []
    peak = 0
    order: list[int] = []
    gates = [asyncio.Event() for _ in range(6)]

    async def call(index: int) -> int:
        nonlocal peak
        running.append(index)
        peak = max(peak, len(running))
        await gates[index].wait()
        running.remove(index)
        order.append(index)
        return index

    calls = [asyncio.ensure_future(shares.run("alice", lambda i=i: call(i))) for i in range(6)]  # type: ignore[misc]
    bob = asyncio.ensure_future(shares.run("bob", lambda: asyncio.sleep(0, "bob")))
    await asyncio.sleep(0)
    assert running == [0, 1]  # alice's others wait; bob does not wait behind them
    assert await bob == "bob"
    calls[3].cancel()  # a waiter that gives up: its turn is skipped
    for gate in gates:
        gate.set()
        await asyncio.sleep(0)
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[:3] == [0, 1, 2]
    assert results[4:] == [4, 5]
    assert isinstance(results[3], asyncio.CancelledError)
    assert 3 not in order  # a cancelled waiter's call is never made
    assert peak == 2
    assert not shares._running
    assert not shares._waiting
