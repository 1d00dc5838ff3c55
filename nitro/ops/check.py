"""`nitro check`: what would stop (error) or weaken (warn) a start, one line per finding, exit 1 on any
error, like `prosodyctl check`. It only reads: no database, file or certificate is created."""

from __future__ import annotations

import errno
import resource
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from nitro.config import Config, ConfigError, is_loopback, load_config
from nitro.observe.logs import configure as configure_logging
from nitro.ops.check_plugins import check_plugins
from nitro.ops.check_storage import check_redis, check_storage
from nitro.ops.check_tls import check_tls
from nitro.ops.findings import Finding, error, ok, warn

FEW_DESCRIPTORS = 4096  # below this hard limit a busy server runs out of connections


def add_check_parser(commands: Any) -> None:
    """The `check` command, on the subparsers object of the `nitro` parser."""
    commands.add_parser(
        "check",
        help="check the config, certificates, storage, Redis ring and ports; exit 1 on any error",
        description=(
            "Prints one line per finding (ok:, warn: or error:) about the configuration (keys and ranges), "
            "the TLS certificate and key (readable, matching, names, expiry), the SQL database (reachable, "
            "schema revision against the newest), each Redis instance, the listening ports (free to bind) "
            "and the file-descriptor limit. Exits 1 when any finding is an error, 0 otherwise. Creates "
            "nothing; run it before a start or after editing the configuration."
        ),
    )


async def check_command(config_path: Path | None) -> int:
    """Run every check against the config at `config_path`, print the findings; the exit code."""
    configure_logging("WARNING", "text", sys.stderr)  # findings on stdout, library trouble on stderr
    findings = [finding async for finding in run_checks(config_path)]
    for finding in findings:
        print(finding)
    return 1 if any(finding.level == "error" for finding in findings) else 0


async def run_checks(config_path: Path | None) -> AsyncIterator[Finding]:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        yield error(f"config: {exc}")
        return
    where = config_path if config_path is not None else "built-in defaults (no --config)"
    base = config.base_dir.absolute()
    yield ok(f"config: {where} is valid for {config.server.domain}; relative paths from {base}")
    for finding in _config_advice(config):
        yield finding
    for finding in check_tls(config):
        yield finding
    async for finding in check_storage(config):
        yield finding
    async for finding in check_redis(config):
        yield finding
    for finding in check_ports(config):
        yield finding
    for finding in check_plugins(config):
        yield finding
    yield check_descriptors()


def _config_advice(config: Config) -> Iterator[Finding]:
    """Settings that are valid but weaken the server."""
    c2s = config.c2s
    if not c2s.require_encryption:
        yield warn("config: [c2s].require_encryption is off: clients may authenticate without TLS")
    if c2s.allow_plain_without_tls and not c2s.require_encryption:
        yield warn(
            "config: [c2s].allow_plain_without_tls sends passwords in the clear on unencrypted streams"
        )
    if config.registration.open and not is_loopback(c2s.host):
        yield warn(f"config: [registration].open: anyone who reaches {c2s.host} can create accounts")


def check_ports(config: Config) -> Iterator[Finding]:
    """Each listener's address can be bound now (port 0, any free port, is not checked)."""
    c2s, metrics = config.c2s, config.metrics
    listeners = [("c2s (STARTTLS)", c2s.host, c2s.port), ("c2s (Direct TLS)", c2s.host, c2s.direct_tls_port)]
    if metrics.enabled:
        listeners.append(("metrics", metrics.host, metrics.port))
    if config.plugins.entries:
        listeners.append(("plugins (XEP-0114)", config.plugins.host, config.plugins.port))
    for name, host, port in listeners:
        if port == 0:
            continue
        problem = _bind_problem(host, port)
        if problem is None:
            yield ok(f"ports: {name} can listen on {host}:{port}")
        else:
            yield error(f"ports: {name} cannot listen on {host}:{port}: {problem}")


def _bind_problem(host: str, port: int) -> str | None:
    """Why binding (host, port) fails, as asyncio's create_server would bind it; None when it works."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host!r}: {exc.strerror}"
    for family, kind, protocol, _name, address in addresses:
        with socket.socket(family, kind, protocol) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does on Unix
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return "the port is in use (by a running Nitro, or another program)"
                return exc.strerror or str(exc)
    return None


def check_descriptors() -> Finding:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < FEW_DESCRIPTORS:
        return warn(
            f"limits: the hard file-descriptor limit is {hard}, one per connection: raise it "
            "(LimitNOFILE= in the systemd unit, `ulimit -Hn` in a shell)"
        )
    shown = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    return ok(f"limits: file descriptors up to {shown} (`nitro serve` raises its soft limit to that)")
