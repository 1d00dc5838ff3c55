"""`make bench`: the load generator's scenarios against Nitro, and Prosody and ejabberd side by side.

    python -m integration.bench --compare-prosody --compare-ejabberd --scenario login --clients 2000
    python -m integration.bench --scenario chat --tls --duration 10
    python -m integration.bench --target 127.0.0.1:5222 --domain example.test --server-pid 1234

Each server (Prosody, ejabberd, then Nitro) runs in its own temporary directory with the same accounts,
rosters, certificate and TLS setting; with two or more cores each server is pinned to the same core and
the load generator to the others.
It prints figures and never judges them: a slow server is not an error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from integration.bench_servers import Plan, servers
from integration.loadgen.accounts import PASSWORD, USER_FORMAT
from integration.loadgen.scenarios import (
    DEFAULT_CLIENTS,
    DEFAULT_RATES,
    DEFAULT_ROSTER,
    P99_TARGET_MS,
    SCENARIOS,
    TITLES,
    Cores,
    Result,
    Scenario,
    Settings,
    Step,
    plan_cores,
    run_scenario,
)
from integration.loadgen.scram import MECHANISMS
from integration.loadgen.worker import LoadgenError, Target, check_loopback

# --- Nitro's own view: event-loop lag and GC pauses from its /metrics ---------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str | None) -> Samples | None:
    """Every sample of a Prometheus endpoint on loopback, or None (no endpoint, or it did not answer)."""
    if url is None:
        return None
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback http only
            text = response.read().decode()
    except OSError:
        return None
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _delta_buckets(before: Samples, after: Samples, name: str) -> dict[float, float]:
    """Cumulative bucket counts of histogram `name` gained between two scrapes, summed over other labels."""
    buckets: dict[float, float] = {}
    for (sample, labels), value in after.items():
        if sample == f"{name}_bucket":
            bound = float(dict(labels)["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value - before.get((sample, labels), 0.0)
    return dict(sorted(buckets.items()))


def _lag_p99(before: Samples, after: Samples) -> float | None:
    """Event-loop lag p99 between two scrapes, in ms, as the bucket bound it falls under."""
    lag = _delta_buckets(before, after, "nitro_event_loop_lag_seconds")
    total = lag.get(float("inf"), 0.0)
    if not total:
        return None
    return next(b for b, count in lag.items() if count >= 0.99 * total) * 1000


def step_lag(url: str | None) -> Callable[[], Callable[[], float | None]] | None:
    """For Result.step_lag: scrapes as a chat step starts and as it ends."""
    if url is None:
        return None

    def start() -> Callable[[], float | None]:
        before = scrape(url)

        def stop() -> float | None:
            after = scrape(url)
            return None if before is None or after is None else _lag_p99(before, after)

        return stop

    return start


def record_loop_and_gc(result: Result, before: Samples | None, after: Samples | None) -> None:
    """Rows for the phase just run: event-loop lag p99 (as the bucket bound it falls under), the largest
    lag, and garbage-collection pauses over 20 ms and the longest one's bucket; for a chat sweep also the
    lag p99 of the step at half the highest rate delivered (a sweep's p99 mixes its overloaded steps in)."""
    if before is None or after is None:
        return
    result.rows["event-loop lag p99 (ms, at most)"] = _lag_p99(before, after)
    half = _half_rate_step(result)
    if half is not None and half.loop_lag_p99 is not None:
        result.rows[f"event-loop lag p99 at {half.offered:g}/s, half the max (ms, at most)"] = (
            half.loop_lag_p99
        )
    result.rows["event-loop lag max (ms)"] = after.get(("nitro_event_loop_lag_max_seconds", ()), 0.0) * 1000
    pauses = _delta_buckets(before, after, "nitro_gc_pause_seconds")
    if pauses:
        collections = pauses.get(float("inf"), 0.0)
        result.rows["GC collections"] = collections
        result.rows["GC pauses over 20 ms"] = collections - pauses.get(0.02, 0.0)
        longest = next((b for b, count in pauses.items() if count >= collections), float("inf"))
        result.rows["longest GC pause (ms, at most)"] = longest * 1000 if collections else 0.0


# --- output -----------------------------------------------------------------------------------------


def _format(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer() or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "-"
    return f"{ours / theirs:.2f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def print_steps(result: Result) -> None:
    rows = [
        [
            _format(s.offered),
            _format(s.delivered),
            _format(s.p50),
            _format(s.p99),
            _format(s.p999),
            f"{s.undelivered:,}",
            _format(s.loadgen_cpu),
            _format(s.server_cpu),
            _format(s.loop_lag_p99),
        ]
        for s in result.steps
    ]
    headers = [
        "offered/s",
        "delivered/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "undelivered",
        "loadgen %",
        "server %",
        "loop lag p99 ms",
    ]
    print(f"\n{result.server}: chat rate sweep")
    print(table(headers, rows))


def _half_rate_step(result: Result) -> Step | None:
    """The sweep's highest offered rate at or under half the highest rate delivered."""
    if not result.steps:
        return None
    half = max(s.delivered for s in result.steps) / 2
    return max((s for s in result.steps if s.offered <= half), key=lambda s: s.offered, default=None)


def common_rate(results: Sequence[Result]) -> Step | None:
    """The highest offered rate every server held at p99 ≤ target (for comparing latencies)."""
    held = [
        {s.offered for s in r.steps if s.p99 is not None and s.p99 <= P99_TARGET_MS and not s.undelivered}
        for r in results
    ]
    common = set.intersection(*held) if held else set()
    return None if not common else next(s for s in results[0].steps if s.offered == max(common))


def print_results(scenario: Scenario, results: Sequence[Result]) -> None:
    if scenario == "chat":
        for result in results:
            print_steps(result)
        rate = common_rate(results)
        if rate is not None:
            for result in results:
                step = next(s for s in result.steps if s.offered == rate.offered)
                result.rows[f"  p50 (ms) at {rate.offered:g}/s"] = step.p50
                result.rows[f"  p99 (ms) at {rate.offered:g}/s"] = step.p99
                result.rows[f"  p99.9 (ms) at {rate.offered:g}/s"] = step.p999
    names = list(dict.fromkeys(name for r in results for name in r.rows))
    # The last result is ours (Nitro, run last); one ratio column against each peer before it.
    peers = results[:-1]
    ours = results[-1].server.split()[0]
    headers = ["metric", *(r.server for r in results), *(f"{ours}/{p.server.split()[0]}" for p in peers)]
    rows = []
    for name in names:
        values = [r.rows.get(name) for r in results]
        row = [name, *(_format(v) for v in values), *(_ratio(values[-1], v) for v in values[:-1])]
        rows.append(row)
    print()
    print(table(headers, rows))
    for result in results:
        for note in dict.fromkeys(result.notes):
            print(f"  note ({result.server}): {note}")


# --- command line -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m integration.bench",
        description=(
            "Run the load generator's scenarios against Nitro (started from this tree, on loopback), "
            "with Debian's Prosody and/or ejabberd run before it on the same core with the same accounts "
            "(--compare-prosody, --compare-ejabberd; `make bench` passes both), or any XMPP server on "
            "this machine (--target), and print the figures as a table. Loopback only."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "scenarios:\n"
            "  login     N clients connect, authenticate, bind, fetch a roster of 20 and send presence at\n"
            "            once: logins/s and p50/p99 login time (--duration bounds the wait, default 60 s)\n"
            "  idle      N sessions held open: server RSS per session from /proc/PID/status VmRSS\n"
            "            (--duration: seconds to hold, default 5)\n"
            "  chat      N/2 pairs message each other at offered rates swept upward (--rates): delivered\n"
            "            msgs/s, p50/p99/p99.9 latency, the rate where p99 passes 100 ms, and Nitro's\n"
            "            event-loop lag p99 per rate (a row for the rate at half the highest delivered)\n"
            "            (--duration: seconds per rate, default 5)\n"
            "  presence  users with 50-contact rosters log out and in again: presence stanzas/s\n"
            "            (--duration: seconds of storm, default 10)\n"
            "  all       each of the above in turn\n\n"
            "default clients: login 2000, idle 2000, chat 200, presence 500.\n"
            "Accounts are u00000, u00001, … with password 'loadgen password' (--target: create them first)."
        ),
    )
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--clients", type=int, help="number of clients (default: per scenario, see below)")
    parser.add_argument("--duration", type=float, help="seconds; meaning per scenario, see below")
    parser.add_argument("--workers", type=int, help="load generator processes (default: one per core it has)")
    parser.add_argument(
        "--tls", action="store_true", help="STARTTLS, required by the servers (default: plain TCP)"
    )
    parser.add_argument("--mechanism", choices=MECHANISMS, default="SCRAM-SHA-1", help="SASL mechanism")
    parser.add_argument("--roster", type=int, help="contacts per user (default: 20, presence storm 50)")
    parser.add_argument(
        "--rates",
        default=",".join(str(r) for r in DEFAULT_RATES),
        help="chat: offered msgs/s, comma-separated",
    )
    parser.add_argument(
        "--compare-prosody", action="store_true", help="also run Debian's Prosody (installed if missing)"
    )
    parser.add_argument(
        "--compare-ejabberd",
        action="store_true",
        help="also run Debian's ejabberd on its internal Mnesia (installed if missing)",
    )
    parser.add_argument(
        "--archive",
        action="store_true",
        help="message archiving on (Nitro mam, Prosody and ejabberd mod_mam, archiving everything)",
    )
    parser.add_argument("--insecure", action="store_true", help="TLS without certificate verification")
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the generator and the server to cores"
    )
    target = parser.add_argument_group("any XMPP server already running on this machine")
    target.add_argument(
        "--target", metavar="HOST:PORT", help="benchmark this server instead of starting Nitro"
    )
    target.add_argument(
        "--domain", default="localhost", help="XMPP domain of the accounts (default localhost)"
    )
    target.add_argument("--password", default=PASSWORD, help="password of every account")
    target.add_argument("--user-format", default=USER_FORMAT, help="localpart of account N (Python format)")
    target.add_argument("--server-pid", type=int, help="server process, for its CPU and RSS figures")
    target.add_argument(
        "--cafile", help="CA (or self-signed certificate) the target's TLS certificate chains to"
    )
    return parser


def parse_plan(argv: Sequence[str] | None) -> Plan:
    parser = build_parser()
    args = parser.parse_args(argv)
    target = None
    if args.target:
        host, _, port = args.target.rpartition(":")
        if not host or not port.isdigit():
            parser.error("--target must be HOST:PORT")
        target = (host.strip("[]"), int(port))
        if args.compare_prosody or args.compare_ejabberd:
            parser.error("--target and --compare-prosody/--compare-ejabberd do not go together")
    try:
        rates = tuple(float(r) for r in args.rates.split(",") if r.strip())
    except ValueError:
        parser.error("--rates must be numbers separated by commas")
    if not rates or min(rates) <= 0:
        parser.error("--rates must be positive")
    if args.clients is not None and args.clients < 2:
        parser.error("--clients must be at least 2")
    return Plan(
        scenarios=SCENARIOS if args.scenario == "all" else (args.scenario,),
        clients=args.clients,
        settings=Settings(duration=args.duration, rates=rates, workers=args.workers),
        starttls=args.tls,
        mechanism=args.mechanism,
        roster=args.roster,
        compare_prosody=args.compare_prosody,
        compare_ejabberd=args.compare_ejabberd,
        archive=args.archive,
        verify=not args.insecure,
        pin=not args.no_pin,
        target=target,
        domain=args.domain,
        password=args.password,
        user_format=args.user_format,
        server_pid=args.server_pid,
        cafile=args.cafile,
    )


def describe(scenario: Scenario, plan: Plan, users: int, roster: int, cores: Cores) -> str:
    workers = plan.settings.workers or cores.loadgen_count
    transport = "STARTTLS" if plan.starttls else "plain TCP (no TLS)"
    return (
        f"== {TITLES[scenario]}: {users} clients, {plan.mechanism}, {transport}, rosters of {roster}, "
        f"{workers} load generator process{'es' if workers > 1 else ''} ==\n{cores.describe()}"
    )


def run(plan: Plan) -> int:
    cores = plan_cores(plan.pin)
    if cores.loadgen:
        os.sched_setaffinity(0, cores.loadgen)  # this process is part of the load generator
    if plan.target is not None:
        check_loopback(plan.target[0])
    with tempfile.TemporaryDirectory(prefix="nitro-bench-") as temporary:
        base = Path(temporary)
        base.chmod(0o711)  # Prosody and ejabberd run as their own users and must reach their directories
        cert, key = base / "tls" / "cert.pem", base / "tls" / "key.pem"
        if plan.target is None:
            from nitro.transports.tls import ensure_certificate

            ensure_certificate(cert, key, plan.domain)
        for scenario in plan.scenarios:
            users = plan.clients or DEFAULT_CLIENTS[scenario]
            users += users % 2  # chat pairs
            roster = DEFAULT_ROSTER[scenario] if plan.roster is None else plan.roster
            print(describe(scenario, plan, users, roster, cores), flush=True)
            names = [plan.user_format.format(i) for i in range(users)]
            results: list[Result] = []
            if plan.target is not None:
                host, port = plan.target
                target = Target(
                    host,
                    port,
                    plan.domain,
                    plan.password,
                    plan.mechanism,
                    plan.starttls,
                    plan.cafile,
                    plan.verify,
                    plan.user_format,
                )
                result = Result(f"{host}:{port}")
                run_scenario(scenario, plan.settings, target, users, plan.server_pid, cores, result)
                results.append(result)
            else:
                for name, start in servers(plan):
                    result = Result(name)
                    directory = base / f"{scenario}-{name.split()[0].lower()}"
                    try:
                        with start(directory, plan, names, roster, cert, key, cores) as (port, pid, metrics):
                            target = Target(
                                "127.0.0.1",
                                port,
                                plan.domain,
                                PASSWORD,
                                plan.mechanism,
                                plan.starttls,
                                str(cert),
                                plan.verify,
                            )
                            result.step_lag = step_lag(metrics)
                            before = scrape(metrics)
                            run_scenario(scenario, plan.settings, target, users, pid, cores, result)
                            record_loop_and_gc(result, before, scrape(metrics))
                    except (LoadgenError, RuntimeError, OSError) as error:
                        result.notes.append(f"run failed: {error}")
                    results.append(result)
                    print(f"  {name}: done", flush=True)
            print_results(scenario, results)
            print(flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    plan = parse_plan(argv)
    try:
        return run(plan)
    except LoadgenError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
