"""The benchmark's per-step event-loop lag (integration/bench.py): the p99 bucket between two scrapes of
Nitro's /metrics, and the row for the step at half the highest rate delivered (a sweep-wide p99 mixes the
overloaded steps in, which is not what "lag at half the maximum rate" asks)."""

from __future__ import annotations

from integration.bench import Samples, _half_rate_step, _lag_p99, record_loop_and_gc
from integration.loadgen.scenarios import Result, Step

BOUNDS = (0.001, 0.005, 0.01, 0.05, float("inf"))


def lag_samples(counts: tuple[int, ...]) -> Samples:
    """Cumulative bucket counts of nitro_event_loop_lag_seconds, one per bound."""
    samples: Samples = {}
    for bound, count in zip(BOUNDS, counts, strict=True):
        le = "+Inf" if bound == float("inf") else repr(bound)
        samples[("nitro_event_loop_lag_seconds_bucket", (("le", le),))] = float(count)
    return samples


def step(offered: float, delivered: float, lag: float | None) -> Step:
    return Step(offered, delivered, 1.0, 2.0, 3.0, 100, 0, 0, 10.0, 50.0, loop_lag_p99=lag)


def test_the_p99_is_the_bucket_of_what_happened_between_the_scrapes() -> None:
    before = lag_samples((1000, 1000, 1000, 1000, 1000))  # an earlier burst of slow turns is not counted
    after = lag_samples((1980, 1999, 2000, 2000, 2000))  # 1,000 turns since: 980 ≤ 1 ms, 999 ≤ 5 ms
    assert _lag_p99(before, after) == 5.0
    assert _lag_p99(after, after) is None  # no turn measured


def test_the_half_rate_row_takes_the_step_at_or_under_half_the_highest_rate_delivered() -> None:
    result = Result("Nitro 0.1.0")
    result.steps = [
        step(500, 500, 1.0),
        step(1000, 999, 5.0),
        step(2000, 1990, 10.0),
        step(4000, 2100, 500.0),
    ]
    assert _half_rate_step(result) == result.steps[1]  # half of 2,100 is 1,050: the 1,000/s step
    before, after = lag_samples((0, 0, 0, 0, 0)), lag_samples((10, 10, 10, 10, 10))
    record_loop_and_gc(result, before, after)
    assert result.rows["event-loop lag p99 at 1000/s, half the max (ms, at most)"] == 5.0
    assert result.rows["event-loop lag p99 (ms, at most)"] == 1.0


def test_a_sweep_without_steps_or_metrics_gets_no_half_rate_row() -> None:
    result = Result("Nitro 0.1.0")
    assert _half_rate_step(result) is None
    record_loop_and_gc(result, None, None)
    assert result.rows == {}
