"""The allowed range of every numeric configuration key, and the ports that must not collide.

`nitro.config` turns each problem into a start-up error; `nitro check` reports the same ones.
"""

from __future__ import annotations

from collections.abc import Iterator

# (low, high, low_inclusive): a port is 0..65535 (0: any free port, or off for direct_tls_port);
# "positive" excludes 0; None as high: no upper bound.
_Range = tuple[float, float | None, bool]
_PORT: _Range = (0, 65535, True)
_POSITIVE: _Range = (0, None, False)
_AT_LEAST_ONE: _Range = (1, None, True)
_NOT_NEGATIVE: _Range = (0, None, True)

RANGES: dict[str, dict[str, _Range]] = {
    "upgrade": {
        "ready_timeout": _POSITIVE,
        "drain_rate": _POSITIVE,
        "drain_deadline": _POSITIVE,
        "proof_timeout": _POSITIVE,
    },
    "c2s": {
        "port": _PORT,
        "direct_tls_port": _PORT,
        "backlog": _AT_LEAST_ONE,
        "negotiation_timeout": _POSITIVE,
        "idle_ping_after": _POSITIVE,
        "ping_timeout": _POSITIVE,
        "keepalive_interval": _POSITIVE,
        "write_timeout": _POSITIVE,
        "release_parser_after": _POSITIVE,
        "max_resources_per_account": _AT_LEAST_ONE,
        "max_negotiating": _AT_LEAST_ONE,
        "max_logins_per_account": _AT_LEAST_ONE,
    },
    "auth": {
        "max_failures_per_stream": _AT_LEAST_ONE,
        "throttle_failures": _AT_LEAST_ONE,
        "throttle_window": _POSITIVE,
        "scram_iterations": (4096, None, True),  # RFC 7677 §4 and RFC 5802 §5.1: at least 4096
    },
    "registration": {
        "min_password_length": _AT_LEAST_ONE,
        "max_per_address": _AT_LEAST_ONE,
        "window": _POSITIVE,
    },
    "roster": {"max_items": _NOT_NEGATIVE},  # 0: no limit
    "offline": {"quota": _NOT_NEGATIVE},
    "stream_management": {
        "resume_timeout": _NOT_NEGATIVE,  # 0: no resumption
        "ack_request_every": _AT_LEAST_ONE,
        "max_unacked": _AT_LEAST_ONE,
        "max_unacked_bytes": (10_000, None, True),  # one stanza of [c2s].max_stanza_bytes' minimum fits
        "max_unacked_bytes_total": (10_000, None, True),
    },
    "limits": {
        "bytes_per_second": _NOT_NEGATIVE,  # 0: no byte rate
        "stanzas_per_second": _NOT_NEGATIVE,  # 0: no stanza rate
        "burst_seconds": _POSITIVE,
        "max_connections_per_address": _NOT_NEGATIVE,  # 0: no cap
        "max_names_before_auth": (32, None, True),  # a login and an in-band registration need some 40
        "preauth_streams_per_thread": _NOT_NEGATIVE,  # 0: no parsing threads
    },
    "archive": {
        "retention_days": _NOT_NEGATIVE,
        "max_page_size": _AT_LEAST_ONE,
        "batch_size": _AT_LEAST_ONE,
        "batch_delay": _NOT_NEGATIVE,
        "max_pending": _AT_LEAST_ONE,
    },
    "pep": {
        "max_item_bytes": _AT_LEAST_ONE,
        "max_items_per_node": _AT_LEAST_ONE,
        "max_nodes": _AT_LEAST_ONE,
        "max_items_per_account": _NOT_NEGATIVE,  # 0: no limit
    },
    "private": {"max_namespaces": _NOT_NEGATIVE},  # 0: no limit
    "vcard": {"max_bytes": _AT_LEAST_ONE},
    "metrics": {"port": _PORT},
    "runtime": {"malloc_mmap_threshold": (0, 32 * 1024 * 1024, True)},  # glibc refuses more than 32 MiB
    "plugins": {
        "port": _PORT,
        "handshake_timeout": _POSITIVE,
        "queue_max": _NOT_NEGATIVE,  # 0: nothing is held, a down plugin means service-unavailable at once
        "queue_timeout": _POSITIVE,
        "ping_interval": _POSITIVE,
        "ping_timeout": _POSITIVE,
        "stop_timeout": _POSITIVE,
        "stanzas_per_second": _NOT_NEGATIVE,  # 0: no cap
    },
    # [cluster] (nitro/cluster/)
    "cluster": {"heartbeat_ttl": _POSITIVE, "request_timeout": _POSITIVE, "connect_timeout": _POSITIVE},
}


def range_problems(config: object) -> Iterator[str]:
    """Each key of `config` (a `Config`) outside its range, and each pair of listeners on one port."""
    for section_name, keys in RANGES.items():
        section = getattr(config, section_name)
        for key, (low, high, inclusive) in keys.items():
            value = getattr(section, key)
            if high is not None and not low <= value <= high:
                yield f"[{section_name}].{key} must be between {low} and {high}, got {value}"
            elif value < low or (value == low and not inclusive):
                wanted = "positive" if (low, inclusive) == (0, False) else f"at least {low}"
                yield f"[{section_name}].{key} must be {wanted}, got {value}"
    c2s = getattr(config, "c2s")  # noqa: B009 (typed as object: no import of nitro.config, no circle)
    if c2s.port and c2s.port == c2s.direct_tls_port:
        yield f"[c2s].port and [c2s].direct_tls_port are both {c2s.port}"
    metrics = getattr(config, "metrics")  # noqa: B009
    if (
        metrics.enabled
        and metrics.port
        and metrics.host == c2s.host
        and metrics.port in (c2s.port, c2s.direct_tls_port)
    ):
        yield f"[metrics].port {metrics.port} is also a [c2s] port on {c2s.host}"
    plugins = getattr(config, "plugins")  # noqa: B009
    taken = {c2s.port: "[c2s].port", c2s.direct_tls_port: "[c2s].direct_tls_port"}
    if plugins.entries and plugins.port and plugins.port in taken and plugins.host == c2s.host:
        yield f"[plugins].port {plugins.port} is also {taken[plugins.port]} on {c2s.host}"
