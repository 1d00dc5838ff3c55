"""Paced garbage collection: young collections on a clock, full ones only after the old generation grew."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest
from conftest import make_config, wait_for

from nitro.config import ConfigError, GCSection, parse_config
from nitro.observe.gc_pacer import FULL_GROWTH, NEVER, GCPacer
from nitro.server import running_server


async def test_an_idle_server_collects_young_objects_on_its_clock(tmp_path: Path) -> None:
    before = gc.get_threshold()
    config = make_config(tmp_path, gc={"young_interval": 0.02, "middle_every": 3, "threshold0": 12345})
    async with running_server(config) as server:
        assert any(task.get_name() == "gc-pacer" for task in asyncio.all_tasks())
        assert gc.get_threshold() == (12345, 2, NEVER)  # full collections are the pacer's alone
        young, middle = server.metrics.gc[0].collections, server.metrics.gc[1].collections
        await wait_for(lambda: server.metrics.gc[0].collections >= young + 6)
        await wait_for(lambda: server.metrics.gc[1].collections >= middle + 2)
    assert not any(task.get_name() == "gc-pacer" for task in asyncio.all_tasks())
    assert gc.get_threshold() == before


async def test_pacing_can_be_turned_off(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path, gc={"young_interval": 0})):
        assert not any(task.get_name() == "gc-pacer" for task in asyncio.all_tasks())
        assert gc.get_threshold() == (10000, 2, 100)


async def test_the_shutdown_starts_no_full_collection(tmp_path: Path) -> None:
    """Once the pacer has stopped, closing every session would make CPython start a full collection over all
    of them while clients wait; the shutdown runs with the configured young thresholds and no full ones."""
    before = gc.get_threshold()
    seen: list[tuple[int, ...]] = []
    async with running_server(make_config(tmp_path, gc={"threshold0": 12345})) as server:
        shutdown = server.shutdown

        async def observed_shutdown() -> None:
            seen.append(gc.get_threshold())
            await shutdown()

        server.shutdown = observed_shutdown  # type: ignore[method-assign]
    assert seen == [(12345, 2, NEVER)]
    assert gc.get_threshold() == before


def _cycles(count: int) -> list[list[object]]:
    cycles: list[list[object]] = []
    for _ in range(count):
        cycle: list[object] = []
        cycle.append(cycle)
        cycles.append(cycle)
    return cycles


def test_a_full_collection_waits_for_its_interval_and_for_growth() -> None:
    section = GCSection(full_interval=10.0, middle_every=100)
    gc.collect()
    pacer = GCPacer(section, now=0.0)
    old = len(gc.get_objects(2))
    garbage = _cycles(int(old * (FULL_GROWTH - 1)) + 20_000)
    gc.collect(1)  # the cycles are old now, and still alive
    assert pacer.tick(now=5.0) == 0  # grown, but the interval has not passed
    del garbage  # only a full collection can free them now
    assert pacer.tick(now=10.0) == 2
    assert len(gc.get_objects(2)) < old * FULL_GROWTH  # the old cycles were freed
    _cycles(100)
    assert pacer.tick(now=20.0) == 0  # no growth since: no full pause


def test_every_nth_tick_collects_the_middle_generation() -> None:
    pacer = GCPacer(GCSection(middle_every=3), now=0.0)
    assert [pacer.tick(now=1.0) for _ in range(6)] == [0, 0, 1, 0, 0, 1]


@pytest.mark.parametrize(
    "table",
    [{"young_interval": -1}, {"middle_every": 0}, {"full_interval": 0}],
)
def test_bad_pacing_settings_are_refused(table: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=r"\[gc\] young_interval must be at least 0"):
        parse_config({"gc": table})
