"""The benchmark scenarios, run from the parent: commands to the workers, figures merged into a Result.

login storm → logins/s and login times; idle sessions → server RSS per session; chat → delivered
messages/s and latency percentiles over a sweep of offered rates; presence storm → presence stanzas/s.
Each measured phase also records the CPU of the server (from /proc) and of the load generator itself.
"""

from __future__ import annotations

import array
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from integration.loadgen.stats import own_cpu_seconds, percentile, process_cpu_seconds, rss_kib
from integration.loadgen.worker import (
    ChatReport,
    ChatStep,
    Login,
    LoginReport,
    Logout,
    Ping,
    PresenceReport,
    PresenceStorm,
    Target,
    WorkerPool,
)

Scenario = Literal["login", "idle", "chat", "presence"]
SCENARIOS: tuple[Scenario, ...] = ("login", "idle", "chat", "presence")
TITLES: dict[Scenario, str] = {
    "login": "login storm",
    "idle": "idle sessions",
    "chat": "chat throughput",
    "presence": "presence storm",
}
DEFAULT_CLIENTS: dict[Scenario, int] = {"login": 2000, "idle": 2000, "chat": 200, "presence": 500}
DEFAULT_DURATION: dict[Scenario, float] = {"login": 60.0, "idle": 5.0, "chat": 5.0, "presence": 10.0}
DEFAULT_ROSTER: dict[Scenario, int] = {"login": 20, "idle": 20, "chat": 20, "presence": 50}
DEFAULT_RATES = (250, 500, 1000, 2000, 3000, 4000, 6000, 8000, 12000, 16000, 20000, 24000, 32000)
P99_TARGET_MS = 100.0
PRESENCE_ONLINE = (0.5, 2.0)  # seconds a presence-storm user stays online between logins
SETTLE = 2.0  # seconds between the last idle login and reading the server's RSS


@dataclass(frozen=True, slots=True)
class Settings:
    """What the scenarios take from the command line."""

    duration: float | None = None  # per scenario: see DEFAULT_DURATION
    rates: tuple[float, ...] = DEFAULT_RATES
    workers: int | None = None  # default: one per core of the load generator


# --- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One offered rate of the chat sweep."""

    offered: float
    delivered: float  # messages/s received during the step
    p50: float | None  # milliseconds
    p99: float | None
    p999: float | None
    sent: int
    undelivered: int  # sent but not received by the end of the drain
    skipped: int
    loadgen_cpu: float  # percent of the generator's cores
    server_cpu: float | None  # percent of one core
    loop_lag_p99: float | None = None  # the server's event-loop lag p99 in this step (ms; Nitro only)


@dataclass(slots=True)
class Result:
    server: str  # "Nitro 0.1.0", "Prosody 0.12.3-1"
    rows: dict[str, float | None] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # called as a chat step starts; what it returns, called as the step ends, gives the step's loop lag p99
    step_lag: Callable[[], Callable[[], float | None]] | None = None


# --- CPU pinning and metering -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cores:
    loadgen: frozenset[int] | None
    server: frozenset[int] | None

    def describe(self) -> str:
        if self.loadgen is None or self.server is None:
            return "CPU pinning: off (the load generator and the server share every core)"
        return (
            f"CPU pinning: load generator on CPU {_cpus(self.loadgen)}, server on CPU {_cpus(self.server)} "
            "(os.sched_setaffinity)"
        )

    @property
    def loadgen_count(self) -> int:
        return len(self.loadgen) if self.loadgen else os.cpu_count() or 1


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def plan_cores(pin: bool) -> Cores:
    available = sorted(os.sched_getaffinity(0))
    if not pin or len(available) < 2:
        return Cores(None, None)
    return Cores(frozenset(available[:1]), frozenset(available[1:2]))


class Meter:
    """CPU of the load generator (workers + this process) and of the server over one phase."""

    def __init__(self, pool: WorkerPool, server_pid: int | None, cores: Cores) -> None:
        self.pool, self.server_pid, self.cores = pool, server_pid, cores
        self.started = time.monotonic()
        self.ours = pool.worker_cpu() + own_cpu_seconds()
        self.server = process_cpu_seconds(server_pid) if server_pid else None

    def stop(self) -> tuple[float, float | None]:
        """(load generator % of its cores, server % of one core) since the meter started."""
        wall = max(1e-9, time.monotonic() - self.started)
        ours = (
            (self.pool.worker_cpu() + own_cpu_seconds() - self.ours) / wall / self.cores.loadgen_count * 100
        )
        server = None
        if self.server is not None and self.server_pid:
            now = process_cpu_seconds(self.server_pid)
            server = None if now is None else (now - self.server) / wall * 100
        return ours, server


def settle(pid: int | None, result: Result, *, quiet: float = 20.0, timeout: float = 60.0) -> float:
    """Wait until the server is nearly idle (under `quiet` % of a core for half a second), bounded;
    return how long it stayed busy (to a tenth of a second).

    A server is still routing the presence of a login storm after the last client got its roster;
    a measured phase must not start on that backlog.
    """
    started = time.monotonic()
    if pid is None:
        time.sleep(1.0)
        return 1.0
    quiet_since: float | None = None
    before = process_cpu_seconds(pid)
    while time.monotonic() - started < timeout:
        window_start = time.monotonic()
        time.sleep(0.1)
        after = process_cpu_seconds(pid)
        if before is None or after is None:
            return 0.0
        if (after - before) / (time.monotonic() - window_start) * 100 < quiet:
            quiet_since = window_start if quiet_since is None else quiet_since
            if time.monotonic() - quiet_since >= 0.5:
                return round(quiet_since - started, 1)
        else:
            quiet_since = None
        before = after
    result.notes.append(f"the server was still busy {timeout:g} s after the previous phase")
    return timeout


def _record_cpu(result: Result, loadgen: float, server: float | None) -> None:
    result.rows["server CPU (% of a core)"] = server
    result.rows["load generator CPU (% of its cores)"] = loadgen
    if loadgen > 90:
        result.notes.append(
            f"the load generator used {loadgen:.0f}% of its cores: it may have been the bottleneck, "
            "so these figures are a lower bound for the server"
        )


# --- scenarios --------------------------------------------------------------------------------------


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def _errors(result: Result, errors: dict[str, int]) -> None:
    for reason, count in sorted(errors.items(), key=lambda item: -item[1])[:5]:
        result.notes.append(f"{count} x {reason}")


def login_storm(pool: WorkerPool, settings: Settings, cores: Cores, pid: int | None, result: Result) -> None:
    timeout = settings.duration or DEFAULT_DURATION["login"]
    pool.request(Ping(), timeout=30)
    meter = Meter(pool, pid, cores)
    reports = [
        r for r in pool.request(Login(timeout=timeout), timeout=timeout + 60) if isinstance(r, LoginReport)
    ]
    loadgen, server = meter.stop()
    busy = settle(pid, result) if pid else None
    durations = [d for r in reports for d in r.durations]
    ok = sum(r.ok for r in reports)
    wall = max(r.last_done for r in reports) - min(r.first_start for r in reports)
    result.rows["logins/s"] = ok / wall if ok and wall > 0 else 0.0
    result.rows["login p50 (ms)"] = _ms(percentile(durations, 0.50))
    result.rows["login p99 (ms)"] = _ms(percentile(durations, 0.99))
    result.rows["logged in"] = ok
    result.rows["failed logins"] = sum(sum(r.errors.values()) for r in reports)
    result.rows["server busy after the last login (s)"] = busy
    _record_cpu(result, loadgen, server)
    for report in reports:
        _errors(result, report.errors)
    pool.request(Logout(), timeout=60)


def idle_sessions(
    pool: WorkerPool, settings: Settings, cores: Cores, pid: int | None, result: Result
) -> None:
    hold = settings.duration or DEFAULT_DURATION["idle"]
    if pid is None:
        result.notes.append("no server pid (--server-pid): RSS not measured")
    before = rss_kib(pid) if pid else None
    reports = [r for r in pool.request(Login(timeout=120), timeout=180) if isinstance(r, LoginReport)]
    ok = sum(r.ok for r in reports)
    settle(pid, result)
    time.sleep(SETTLE + hold)
    after = rss_kib(pid) if pid else None
    result.rows["idle sessions"] = ok
    result.rows["server RSS before (MiB)"] = None if before is None else before / 1024
    result.rows["server RSS with sessions (MiB)"] = None if after is None else after / 1024
    per_session = None if before is None or after is None or not ok else (after - before) / ok
    result.rows["RSS per idle session (KiB)"] = per_session
    for report in reports:
        _errors(result, report.errors)
    pool.request(Logout(), timeout=120)


def chat_throughput(
    pool: WorkerPool, settings: Settings, cores: Cores, pid: int | None, result: Result
) -> None:
    duration = settings.duration or DEFAULT_DURATION["chat"]
    drain = max(2.0, duration / 2)
    reports = [r for r in pool.request(Login(timeout=120), timeout=180) if isinstance(r, LoginReport)]
    for report in reports:
        _errors(result, report.errors)
    total = sum(len(share) for share in pool.shares)
    for index, rate in enumerate(settings.rates):
        settle(pid, result)
        pool.request(Ping(), timeout=30)  # fresh CPU baselines
        start_at = time.monotonic() + 0.3
        commands = [ChatStep(index, rate * len(s) / total, start_at, duration, drain) for s in pool.shares]
        meter = Meter(pool, pid, cores)
        lag = None if result.step_lag is None else result.step_lag()
        chats = [
            r for r in pool.request(commands, timeout=duration + drain + 60) if isinstance(r, ChatReport)
        ]
        loadgen, server = meter.stop()
        loop_lag = None if lag is None else lag()
        latencies: array.array[int] = array.array("q")
        for chat in chats:
            latencies.frombytes(chat.latencies_ns)
        values = [v / 1e6 for v in latencies]
        sent = sum(c.sent for c in chats)
        step = Step(
            offered=rate,
            delivered=sum(c.delivered_in_window for c in chats) / duration,
            p50=percentile(values, 0.50),
            p99=percentile(values, 0.99),
            p999=percentile(values, 0.999),
            sent=sent,
            undelivered=sent - len(values),
            skipped=sum(c.skipped for c in chats),
            loadgen_cpu=loadgen,
            server_cpu=server,
            loop_lag_p99=loop_lag,
        )
        result.steps.append(step)
        if loadgen > 90:
            result.notes.append(f"at {rate:g} msgs/s the load generator used {loadgen:.0f}% of its cores")
        if step.delivered < 0.8 * rate or (step.p99 or 0) > 1000 or step.undelivered > 0.01 * max(1, sent):
            break  # saturated: higher rates only queue more
    held = [s for s in result.steps if s.p99 is not None and s.p99 <= P99_TARGET_MS and s.undelivered == 0]
    result.rows[f"delivered msgs/s at p99 ≤ {P99_TARGET_MS:g} ms"] = max(
        (s.delivered for s in held), default=0.0
    )
    result.rows["max delivered msgs/s"] = max((s.delivered for s in result.steps), default=0.0)
    passed = next((s for s in result.steps if s.p99 is None or s.p99 > P99_TARGET_MS), None)
    result.rows[f"offered msgs/s where p99 > {P99_TARGET_MS:g} ms"] = (
        None if passed is None else passed.offered
    )
    pool.request(Logout(), timeout=120)


def presence_storm(
    pool: WorkerPool, settings: Settings, cores: Cores, pid: int | None, result: Result
) -> None:
    duration = settings.duration or DEFAULT_DURATION["presence"]
    reports = [r for r in pool.request(Login(timeout=120), timeout=180) if isinstance(r, LoginReport)]
    result.rows["users online at start"] = sum(r.ok for r in reports)
    settle(pid, result)
    start_at = time.monotonic() + 0.5
    pool.request(Ping(), timeout=30)
    meter = Meter(pool, pid, cores)
    storm = PresenceStorm(start_at, duration, *PRESENCE_ONLINE)
    storms = [r for r in pool.request(storm, timeout=duration + 120) if isinstance(r, PresenceReport)]
    loadgen, server = meter.stop()
    durations = [d for r in storms for d in r.durations]
    result.rows["presence stanzas/s received"] = sum(r.presence_in_window for r in storms) / duration
    result.rows["logins/s during the storm"] = sum(r.cycles for r in storms) / duration
    result.rows["login p99 during the storm (ms)"] = _ms(percentile(durations, 0.99))
    result.rows["failed logins"] = sum(sum(r.errors.values()) for r in storms)
    _record_cpu(result, loadgen, server)
    for report in storms:
        _errors(result, report.errors)
    pool.request(Logout(), timeout=120)


RUNNERS: dict[Scenario, Callable[[WorkerPool, Settings, Cores, int | None, Result], None]] = {
    "login": login_storm,
    "idle": idle_sessions,
    "chat": chat_throughput,
    "presence": presence_storm,
}


def run_scenario(
    scenario: Scenario,
    settings: Settings,
    target: Target,
    users: int,
    pid: int | None,
    cores: Cores,
    result: Result,
) -> None:
    workers = settings.workers or cores.loadgen_count
    with WorkerPool(target, range(users), workers=workers, cpus=cores.loadgen) as pool:
        RUNNERS[scenario](pool, settings, cores, pid, result)
