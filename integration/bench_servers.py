"""The servers `make bench` compares, each started for one scenario in its own directory: Nitro from
this tree, Debian's Prosody (integration/prosody.py) and Debian's ejabberd (integration/ejabberd.py),
with the same accounts, rosters, certificate and TLS rule, pinned to the same core.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from integration.loadgen.accounts import ITERATIONS
from integration.loadgen.scenarios import Cores, Scenario, Settings
from integration.loadgen.scram import Mechanism


@dataclass(frozen=True, slots=True)
class Plan:
    """The parsed command line."""

    scenarios: tuple[Scenario, ...]
    clients: int | None
    settings: Settings
    starttls: bool
    mechanism: Mechanism
    roster: int | None
    compare_prosody: bool
    compare_ejabberd: bool
    archive: bool
    verify: bool
    pin: bool
    target: tuple[str, int] | None
    domain: str
    password: str
    user_format: str
    server_pid: int | None
    cafile: str | None


# --- the servers ------------------------------------------------------------------------------------

# Start one server for a scenario: (directory, plan, account names, roster size, cert, key, cores) →
# a context yielding (port, pid whose CPU and RSS are read, Prometheus URL or None).
ServerStart = Callable[
    [Path, "Plan", Sequence[str], int, Path, Path, Cores],
    contextlib.AbstractContextManager[tuple[int, int, str | None]],
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def nitro_config(directory: Path, port: int, plan: Plan, cert: Path, key: Path, metrics_port: int) -> Path:
    """A Nitro config matching the Prosody one: loopback, same TLS rule, no rate limits, same modules."""
    sections: dict[str, dict[str, object]] = {
        "server": {"domain": plan.domain},
        "storage": {"dsn": f"sqlite+aiosqlite:///{directory / 'nitro.db'}"},
        "c2s": {
            "host": "127.0.0.1",
            "port": port,
            "direct_tls_port": 0,
            "backlog": 4096,
            "require_encryption": plan.starttls,
            "allow_plain_without_tls": not plan.starttls,
            "negotiation_timeout": 300.0,
            "idle_ping_after": 3600.0,
            "keepalive_interval": 3600.0,
        },
        "tls": {"cert": str(cert), "key": str(key), "generate": False},
        "auth": {"throttle_failures": 1_000_000, "scram_iterations": ITERATIONS},
        "registration": {"open": False},
        "modules": {"disabled": [] if plan.archive else ["mam"]},
        "logging": {"level": "WARNING"},
        "metrics": {"port": metrics_port},  # read after each phase: event-loop lag and GC pauses
        "http": {"enabled": False},  # TCP only: the web transports have their own benchmarks
        "admin": {"socket": "", "pid_file": ""},
        # like the Prosody it is compared with: no traffic shaping, and thousands of clients from loopback
        "limits": {"bytes_per_second": 0, "stanzas_per_second": 0, "max_connections_per_address": 0},
    }
    text = "# Written by integration/bench.py for one benchmark run.\n"
    for name, values in sections.items():
        text += f"\n[{name}]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in values.items())
    path = directory / "nitro.toml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def nitro_server(
    directory: Path, plan: Plan, names: Sequence[str], roster_size: int, cert: Path, key: Path, cores: Cores
) -> Iterator[tuple[int, int, str | None]]:
    """Nitro from this tree: (port, pid whose CPU and RSS are read, its metrics URL)."""
    from integration.loadgen.process import running
    from integration.loadgen.provision import provision_bulk

    directory.mkdir(parents=True, exist_ok=True)
    port, metrics_port = free_port(), free_port()
    config = nitro_config(directory, port, plan, cert, key, metrics_port)
    dsn = f"sqlite+aiosqlite:///{directory / 'nitro.db'}"
    asyncio.run(provision_bulk(dsn, plan.domain, names, roster_size=roster_size))
    command = [sys.executable, "-m", "nitro", "--config", str(config), "serve"]
    with running(
        command, port=port, log=directory / "nitro.log", cwd=directory, cpus=cores.server
    ) as process:
        yield port, process.pid, f"http://127.0.0.1:{metrics_port}/metrics"


def peer_settings(plan: Plan) -> dict[str, Any]:
    """What Prosody's and ejabberd's setups take from the plan: domain, TLS rule, SCRAM hash, archive."""
    return {
        "domain": plan.domain,
        "starttls": plan.starttls,
        "hash_name": "SHA-256" if plan.mechanism == "SCRAM-SHA-256" else "SHA-1",
        "archive": plan.archive,
    }


@contextlib.contextmanager
def prosody_server(
    directory: Path, plan: Plan, names: Sequence[str], roster_size: int, cert: Path, key: Path, cores: Cores
) -> Iterator[tuple[int, int, str | None]]:
    from integration.prosody import ProsodySetup, running_prosody

    port = free_port()
    setup = ProsodySetup(port=port, cert=cert, key=key, **peer_settings(plan))
    with running_prosody(directory, setup, names, roster_size=roster_size, cpus=cores.server) as process:
        yield port, process.pid, None


@contextlib.contextmanager
def ejabberd_server(
    directory: Path, plan: Plan, names: Sequence[str], roster_size: int, cert: Path, key: Path, cores: Cores
) -> Iterator[tuple[int, int, str | None]]:
    from integration.ejabberd import EjabberdSetup, running_ejabberd

    port = free_port()
    setup = EjabberdSetup(port=port, cert=cert, key=key, **peer_settings(plan))
    with running_ejabberd(directory, setup, names, roster_size=roster_size, cpus=cores.server) as beam:
        yield port, beam, None


def nitro_label() -> str:
    from nitro import __version__

    return f"Nitro {__version__}"


def prosody_label() -> str:
    from integration.peers import PeerUnavailable
    from integration.prosody import ensure_installed, version

    with contextlib.suppress(PeerUnavailable):  # the run itself reports why it could not start
        ensure_installed()  # before asking dpkg for the version of a package it may only now install
    return f"Prosody {version()}"


def ejabberd_label() -> str:
    from integration.ejabberd import ensure_installed, version
    from integration.peers import PeerUnavailable

    with contextlib.suppress(PeerUnavailable):
        ensure_installed()
    return f"ejabberd {version()}"


def servers(plan: Plan) -> list[tuple[str, ServerStart]]:
    """The servers to run, in order: the peers asked for, then Nitro (last, for the ratio columns)."""
    chosen: list[tuple[str, ServerStart]] = []
    if plan.compare_prosody:
        chosen.append((prosody_label(), prosody_server))
    if plan.compare_ejabberd:
        chosen.append((ejabberd_label(), ejabberd_server))
    chosen.append((nitro_label(), nitro_server))
    return chosen
