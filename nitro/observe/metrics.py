"""Prometheus metrics of one server: recorded as plain counters on the hot path, formatted at scrape time.

Recording takes no lock (it runs inside `gc.callbacks` and on every stanza); a custom collector turns the
numbers into metric families when `/metrics` is scraped. Each server has its own CollectorRegistry.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from nitro.xmpp import ns

log = logging.getLogger(__name__)

KINDS = ("message", "presence", "iq", "nonza")
SESSION_STATES = ("negotiating", "authenticated", "bound", "resumable")
_KIND_OF_TAG = {
    tag: kind
    for kind in ("message", "presence", "iq")
    for tag in (kind, f"{{{ns.CLIENT}}}{kind}")  # server-built stanzas may have no namespace yet
}

ROUTING_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STORAGE_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_BUCKETS = (5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# fine around the 20 ms goal of issue 16, so the longest pause can be read off the buckets
_GC_FINE = (0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03, 0.04)
GC_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, *_GC_FINE, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
QUEUE_BUCKETS = (0, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
LAG_WINDOW = 60.0  # the max-lag gauge covers the current and the previous window of this many seconds

# A tier source returns {kind: (hits, misses)}, counted since it started (e.g. {"roster": (10, 2)}).
TierSource = Callable[[], Mapping[str, tuple[int, int]]]


class SessionLike(Protocol):
    """What the sessions gauge reads from a client session."""

    @property
    def state(self) -> Any: ...  # an enum whose value names the state (c2s.State)

    authenticated: bool


class Buckets:
    """A histogram as plain numbers: observing is a bisect and two additions, no lock."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets (`le`, cumulative count); the +Inf one is the count."""
        running = 0
        result: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            result.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return result


class _GcStats:
    __slots__ = ("collected", "collections", "pauses", "uncollectable")

    def __init__(self) -> None:
        self.collections = 0
        self.collected = 0
        self.uncollectable = 0
        self.pauses = Buckets(GC_BUCKETS)


def session_state(session: SessionLike) -> str | None:
    """The metrics state of a tracked session; None once closed."""
    state = str(session.state.value)
    if state == "closed":
        return None
    if state == "detached":
        return "resumable"  # XEP-0198 §5: connection lost, waiting to be resumed
    if state == "established":
        return "bound"
    return "authenticated" if session.authenticated else "negotiating"


class Metrics:
    """Everything one server measures, and the registry that exposes it."""

    def __init__(self) -> None:
        self.connections_accepted = 0
        self.received = dict.fromkeys(KINDS, 0)
        self.sent = dict.fromkeys(KINDS, 0)
        self.routing = Buckets(ROUTING_BUCKETS)
        self.storage: dict[tuple[str, str], Buckets] = {}
        self.offline_stored = 0
        self.offline_delivered = 0
        self.offline_queue = Buckets(QUEUE_BUCKETS)
        self.loop_lag = Buckets(LAG_BUCKETS)
        self._lag_max = (0.0, 0.0)  # (previous window, current window)
        self.gc = [_GcStats() for _ in range(3)]
        self._gc_started = 0.0
        self._sessions: Callable[[], Iterable[SessionLike]] = tuple
        self._tiers: dict[str, TierSource] = {}
        self._probe: asyncio.Task[None] | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_NitroCollector(self))
        ProcessCollector(registry=self.registry)

    # -- recording (hot path) --------------------------------------------------------------------

    def connection_opened(self) -> None:
        self.connections_accepted += 1

    def stanza_received(self, tag: str) -> None:
        self.received[_KIND_OF_TAG.get(tag, "nonza")] += 1

    def stanza_sent(self, tag: str) -> None:
        self.sent[_KIND_OF_TAG.get(tag, "nonza")] += 1

    def storage_call(self, repository: str, operation: str, seconds: float) -> None:
        buckets = self.storage.get((repository, operation))
        if buckets is None:
            buckets = self.storage[(repository, operation)] = Buckets(STORAGE_BUCKETS)
        buckets.observe(seconds)

    def offline_queue_at_login(self, length: int) -> None:
        self.offline_queue.observe(length)

    # -- sources read at scrape time ---------------------------------------------------------------

    def track_sessions(self, source: Callable[[], Iterable[SessionLike]]) -> None:
        """`source` returns the server's tracked client sessions (bound, negotiating or detached)."""
        self._sessions = source

    def add_tier_source(self, tier: str, source: TierSource) -> Callable[[], None]:
        """Report a storage tier's hits and misses; returns the function that removes it again."""
        self._tiers[tier] = source

        def remove() -> None:
            if self._tiers.get(tier) is source:
                del self._tiers[tier]

        return remove

    def session_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(SESSION_STATES, 0)
        for session in list(self._sessions()):
            state = session_state(session)
            if state is not None:
                counts[state] += 1
        return counts

    def tier_counts(self) -> Iterator[tuple[str, str, int, int]]:
        """(tier, kind, hits, misses) of every source; a failing source is logged and skipped."""
        for tier, source in list(self._tiers.items()):
            try:
                stats = dict(source())
            except Exception:
                log.exception("storage tier %r could not report its hits and misses", tier)
                continue
            for kind, (hits, misses) in sorted(stats.items()):
                yield tier, kind, hits, misses

    @property
    def loop_lag_max(self) -> float:
        return max(self._lag_max)

    # -- probes (started with the metrics endpoint) -------------------------------------------------

    def start(self, lag_interval: float) -> None:
        """Measure event-loop lag every `lag_interval` seconds and GC pauses until `stop`."""
        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(self._probe_loop_lag(lag_interval))
            gc.callbacks.append(self._on_gc)

    async def stop(self) -> None:
        if self._probe is None:
            return
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        self._probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._probe
        self._probe = None

    async def _probe_loop_lag(self, interval: float) -> None:
        """Lag is how much later than asked a sleep wakes up: the time other callbacks held the loop."""
        loop = asyncio.get_running_loop()
        window_end = loop.time() + LAG_WINDOW
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            now = loop.time()
            lag = max(0.0, now - start - interval)
            self.loop_lag.observe(lag)
            previous, current = self._lag_max
            if now >= window_end:
                previous, current, window_end = current, 0.0, now + LAG_WINDOW
            self._lag_max = (previous, max(current, lag))

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        """A `gc.callbacks` hook: runs inside the collector, in whichever thread triggered it."""
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        stats = self.gc[info["generation"]]
        stats.pauses.observe(time.perf_counter() - self._gc_started)
        stats.collections += 1
        stats.collected += info.get("collected", 0)
        stats.uncollectable += info.get("uncollectable", 0)


class _NitroCollector:
    """Turns a Metrics' numbers into metric families at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield from self._sessions()
        yield CounterMetricFamily(
            "nitro_c2s_connections_accepted", "Client connections accepted", m.connections_accepted
        )
        for name, direction, counts in (("received", "from", m.received), ("sent", "to", m.sent)):
            family = CounterMetricFamily(
                f"nitro_stanzas_{name}", f"Top-level elements {name} {direction} clients", labels=["kind"]
            )
            for kind, count in counts.items():
                family.add_metric([kind], count)
            yield family
        yield _histogram("nitro_routing_seconds", "Time the router takes per stanza", m.routing)
        storage = HistogramMetricFamily(
            "nitro_storage_seconds", "SQL repository call latency", labels=["repository", "operation"]
        )
        for (repository, operation), buckets in sorted(m.storage.items()):
            storage.add_metric([repository, operation], buckets.cumulative(), buckets.total)
        yield storage
        yield from self._tiers()
        yield from self._offline()
        yield _histogram("nitro_event_loop_lag_seconds", "How late the event loop runs a timer", m.loop_lag)
        yield GaugeMetricFamily(
            "nitro_event_loop_lag_max_seconds", "Largest event-loop lag in the last minute", m.loop_lag_max
        )
        yield from self._gc()

    def _sessions(self) -> Iterator[Metric]:
        counts = self.metrics.session_counts()
        sessions = GaugeMetricFamily("nitro_c2s_sessions", "Client sessions by state", labels=["state"])
        for state, count in counts.items():
            sessions.add_metric([state], count)
        yield sessions
        live = counts["negotiating"] + counts["authenticated"] + counts["bound"]
        yield GaugeMetricFamily("nitro_c2s_connections", "Open client connections", live)

    def _tiers(self) -> Iterator[Metric]:
        hits = CounterMetricFamily("nitro_storage_tier_hits", "Storage tier hits", labels=["tier", "kind"])
        misses = CounterMetricFamily(
            "nitro_storage_tier_misses", "Storage tier misses", labels=["tier", "kind"]
        )
        for tier, kind, hit, miss in self.metrics.tier_counts():
            hits.add_metric([tier, kind], hit)
            misses.add_metric([tier, kind], miss)
        yield hits
        yield misses

    def _offline(self) -> Iterator[Metric]:
        m = self.metrics
        yield CounterMetricFamily(
            "nitro_offline_messages_stored", "Messages stored for offline users", m.offline_stored
        )
        yield CounterMetricFamily(
            "nitro_offline_messages_delivered", "Stored messages delivered at login", m.offline_delivered
        )
        yield _histogram(
            "nitro_offline_queue_length", "Stored messages waiting when a user logs in", m.offline_queue
        )

    def _gc(self) -> Iterator[Metric]:
        families = {
            "collections": CounterMetricFamily(
                "nitro_gc_collections", "Garbage collections", labels=["generation"]
            ),
            "collected": CounterMetricFamily(
                "nitro_gc_collected_objects", "Objects the GC freed", labels=["generation"]
            ),
            "uncollectable": CounterMetricFamily(
                "nitro_gc_uncollectable_objects", "Objects the GC found uncollectable", labels=["generation"]
            ),
        }
        pauses = HistogramMetricFamily(
            "nitro_gc_pause_seconds", "Garbage collection pauses", labels=["generation"]
        )
        for generation, stats in enumerate(self.metrics.gc):
            label = [str(generation)]
            families["collections"].add_metric(label, stats.collections)
            families["collected"].add_metric(label, stats.collected)
            families["uncollectable"].add_metric(label, stats.uncollectable)
            pauses.add_metric(label, stats.pauses.cumulative(), stats.pauses.total)
        yield from families.values()
        yield pauses


def _histogram(name: str, documentation: str, buckets: Buckets) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=buckets.cumulative(), sum_value=buckets.total)
