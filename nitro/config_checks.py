"""What a well-typed configuration must also satisfy: valid JIDs, DSNs, addresses and Redis URLs, and keys
that must agree with each other; `validate` raises a ConfigError naming the file, the key and the reason.
"""

from __future__ import annotations

import ipaddress
import re

from nitro.config_plugins import PLUGIN_MODES
from nitro.config_ranges import range_problems
from nitro.config_sections import BoshSection, Config, StorageSection
from nitro.storage.ring.keys import PREFIX
from nitro.xmpp.jid import JID, InvalidJID


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, key and reason."""


def validate(config: Config, source: str) -> None:
    """Raise a ConfigError for the first problem of `config`, read from `source`."""
    try:
        domain = JID.parse(config.server.domain)
    except InvalidJID as exc:
        raise ConfigError(f"{source}: [server].domain is not a valid domain: {exc}") from exc
    if domain.local is not None or domain.resource is not None:
        raise ConfigError(f"{source}: [server].domain must be a bare domain, got {config.server.domain!r}")
    for admin in config.server.admins:
        try:
            JID.parse(admin)
        except InvalidJID as exc:
            raise ConfigError(f"{source}: [server].admins: {admin!r} is not a JID: {exc}") from exc
    if (problem := next(range_problems(config), None)) is not None:
        raise ConfigError(f"{source}: {problem}")
    if config.c2s.max_stanza_bytes < 10_000:
        raise ConfigError(f"{source}: [c2s].max_stanza_bytes must be at least 10000 (RFC 6120 §13.12)")
    _validate_bosh(config.bosh, source)
    _validate_http(config, source)
    if config.archive.default not in {"always", "never", "roster"}:
        raise ConfigError(f"{source}: [archive].default must be always, never or roster")
    _validate_storage(config.storage, source)
    _validate_registration(config, source)
    if min(config.gc.threshold0, config.gc.threshold1, config.gc.threshold2) < 1:
        raise ConfigError(f"{source}: [gc] thresholds must be at least 1")
    if config.gc.young_interval < 0 or config.gc.middle_every < 1 or config.gc.full_interval <= 0:
        raise ConfigError(
            f"{source}: [gc] young_interval must be at least 0, middle_every at least 1, "
            "full_interval above 0"
        )
    if config.logging.level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"{source}: [logging].level must be DEBUG, INFO, WARNING or ERROR")
    _validate_observability(config, source)
    _validate_tiers(config, source)
    _validate_limits(config, source)
    _validate_plugins(config, source)
    _validate_cluster(config, source)


def _validate_cluster(config: Config, source: str) -> None:
    """[cluster] (nitro/cluster/): a node name fit for a NATS subject and a Redis key, and a ring."""
    cluster = config.cluster
    workers = config.server.workers
    if workers != "auto" and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise ConfigError(f'{source}: [server].workers must be at least 1 or "auto", got {workers!r}')
    if workers != 1 and not cluster.node:
        raise ConfigError(
            f"{source}: [server].workers: several workers are [cluster] members: set [cluster].node"
        )
    if not cluster.node:
        return
    for key in ("node", "name"):
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", getattr(cluster, key)):
            raise ConfigError(f"{source}: [cluster].{key} must be 1 to 64 of A-Z a-z 0-9 _ -")
    if not config.redis.instances:
        raise ConfigError(f"{source}: [cluster] needs the Redis ring: set [redis].instances")
    if not cluster.nats:
        raise ConfigError(f"{source}: [cluster].nats lists no NATS server")
    if sum(bool(x) for x in (cluster.nats_user, cluster.nats_token, cluster.nats_creds)) > 1:
        raise ConfigError(f"{source}: [cluster]: use one of nats_user, nats_token or nats_creds")


def _validate_limits(config: Config, source: str) -> None:
    for entry in config.limits.exempt_addresses:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise ConfigError(
                f"{source}: [limits].exempt_addresses: {entry!r} is not an address or network"
            ) from exc


def _validate_registration(config: Config, source: str) -> None:
    for entry in config.registration.throttle_exempt:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise ConfigError(
                f"{source}: [registration].throttle_exempt: {entry!r} is not an address"
            ) from exc


def _validate_bosh(bosh: BoshSection, source: str) -> None:
    for key in ("max_wait", "max_inactivity", "max_body_bytes", "read_timeout"):
        if getattr(bosh, key) <= 0:
            raise ConfigError(f"{source}: [bosh].{key} must be positive")
    for key in ("max_hold", "polling", "max_pause"):
        if getattr(bosh, key) < 0:
            raise ConfigError(f"{source}: [bosh].{key} must not be negative")


def _validate_observability(config: Config, source: str) -> None:
    if config.logging.format not in {"text", "json"}:
        raise ConfigError(f"{source}: [logging].format must be text or json")
    metrics = config.metrics
    if not 0 <= metrics.port <= 65535:
        raise ConfigError(f"{source}: [metrics].port must be between 0 and 65535")
    if metrics.lag_interval <= 0:
        raise ConfigError(f"{source}: [metrics].lag_interval must be positive")
    if metrics.enabled and not metrics.token and not is_loopback(metrics.host):
        raise ConfigError(
            f"{source}: [metrics].host {metrics.host!r} is not a loopback address: set [metrics].token "
            "so that only scrapers holding it can read the metrics"
        )


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the name localhost; any other name or address counts as reachable."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_DSN_SCHEMES = ("sqlite+aiosqlite", "mysql+asyncmy", "mariadb+asyncmy")


def _validate_storage(storage: StorageSection, source: str) -> None:
    scheme, separator, rest = storage.dsn.partition("://")
    if not separator or scheme not in _DSN_SCHEMES:
        raise ConfigError(f"{source}: [storage].dsn must start with one of {', '.join(_DSN_SCHEMES)}://")
    if scheme != "sqlite+aiosqlite" and not rest.partition("?")[0].partition("/")[2]:
        raise ConfigError(f"{source}: [storage].dsn must name a database: {scheme}://USER@HOST:PORT/DATABASE")
    if storage.pool_size < 1:
        raise ConfigError(f"{source}: [storage].pool_size must be at least 1")
    if storage.max_overflow < 0:
        raise ConfigError(f"{source}: [storage].max_overflow must not be negative")
    if storage.pool_recycle <= 0 and storage.pool_recycle != -1:
        raise ConfigError(f"{source}: [storage].pool_recycle must be positive, or -1 to never recycle")
    for key in ("pool_timeout", "connect_timeout", "query_timeout"):
        if getattr(storage, key) <= 0:
            raise ConfigError(f"{source}: [storage].{key} must be positive")


def _validate_tiers(config: Config, source: str) -> None:
    redis = config.redis
    for i, instance in enumerate(redis.instances):
        if not instance.url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"{source}: [redis].instances[{i}]: url must be redis://host:port/db")
        if instance.weight < 1:
            raise ConfigError(f"{source}: [redis].instances[{i}]: weight must be at least 1")
    if not PREFIX.fullmatch(redis.prefix):
        raise ConfigError(f"{source}: [redis].prefix must be 1 to 64 of A-Z a-z 0-9 _ . -")
    if len({instance.url for instance in redis.instances}) != len(redis.instances):
        raise ConfigError(f"{source}: [redis].instances: an instance is listed twice")
    timings = ("health_interval", "health_timeout", "socket_timeout", "value_ttl", "session_ttl")
    for name in timings:
        if getattr(redis, name) <= 0:
            raise ConfigError(f"{source}: [redis].{name} must be positive")
    if redis.failures_before_out < 1:
        raise ConfigError(f"{source}: [redis].failures_before_out must be at least 1")
    if redis.generation_ttl <= 2 * max(redis.value_ttl, config.cache.ttl):
        raise ConfigError(f"{source}: [redis].generation_ttl must exceed twice value_ttl and [cache].ttl")
    if config.cache.max_entries < 0 or config.cache.max_bytes < 0 or config.cache.ttl <= 0:
        raise ConfigError(f"{source}: [cache] sizes must not be negative and ttl must be positive")


def _validate_http(config: Config, source: str) -> None:
    http = config.http
    for key in ("port", "tls_port"):
        if not 0 <= getattr(http, key) <= 65535:
            raise ConfigError(f"{source}: [http].{key} must be between 0 and 65535 (0 turns it off)")
    for proxy in http.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError as exc:
            raise ConfigError(
                f"{source}: [http].trusted_proxies: {proxy!r} is not an address or network"
            ) from exc
    if http.max_body_bytes < config.c2s.max_stanza_bytes:
        raise ConfigError(f"{source}: [http].max_body_bytes must be at least [c2s].max_stanza_bytes")
    if http.header_timeout <= 0:
        raise ConfigError(f"{source}: [http].header_timeout must be positive")


def _validate_plugins(config: Config, source: str) -> None:
    """[plugins]: a known mode, a secret, and a domain of its own (not the server's, nor shared)."""
    seen: dict[str, str] = {}
    for entry in config.plugins.entries:
        where = f"{source}: [plugins.{entry.name}]"
        if entry.mode not in PLUGIN_MODES:
            raise ConfigError(f"{where}.mode must be one of {', '.join(PLUGIN_MODES)}, got {entry.mode!r}")
        if not entry.secret:
            raise ConfigError(f"{where}.secret is required (the XEP-0114 handshake secret)")
        if entry.failure_policy not in ("open", "closed"):
            raise ConfigError(f"{where}.failure_policy must be open or closed, got {entry.failure_policy!r}")
        if entry.spool and entry.jetstream:
            raise ConfigError(f"{where}: spool and jetstream are two places for one queue: choose one")
        if entry.jetstream and not entry.jetstream.startswith(("nats://", "tls://")):
            raise ConfigError(f"{where}.jetstream must be a nats:// or tls:// URL")
        if (problem := _privilege_problem(entry.privileges)) is not None:
            raise ConfigError(f"{where}.privileges: {problem}")
        if entry.filter_timeout <= 0 or entry.observe_queue < 0 or entry.delegation_timeout <= 0:
            raise ConfigError(
                f"{where}: filter_timeout and delegation_timeout must be positive, observe_queue >= 0"
            )
        try:
            domain = JID.parse(entry.subdomain)
        except InvalidJID as exc:
            raise ConfigError(f"{where}.subdomain is not a domain: {entry.subdomain!r} ({exc})") from exc
        if domain.local is not None or domain.resource is not None:
            raise ConfigError(f"{where}.subdomain must be a bare domain, got {entry.subdomain!r}")
        if domain.domain == config.server.domain:
            raise ConfigError(f"{where}.subdomain must not be the server's own domain")
        if domain.domain in seen:
            raise ConfigError(f"{where}.subdomain {domain.domain} is also [plugins.{seen[domain.domain]}]'s")
        seen[domain.domain] = entry.name
    for peer in config.plugins.allowed_peers:
        try:
            ipaddress.ip_network(peer, strict=False)
        except ValueError as exc:
            raise ConfigError(
                f"{source}: [plugins].allowed_peers: {peer!r} is not an address or network"
            ) from exc


_PRIVILEGES = {
    "roster": ("none", "get", "set", "both"),
    "message": ("none", "outgoing"),
    "presence": ("none", "managed_entity"),  # not yet "roster" (contacts' presences)
}


def _privilege_problem(privileges: dict[str, object]) -> str | None:
    """XEP-0356 §4 values, as ejabberd's mod_privilege takes them (presence "roster" is not offered yet)."""
    for access, value in privileges.items():
        if access == "iq":
            if not isinstance(value, dict) or any(v not in ("get", "set", "both") for v in value.values()):
                return "iq must be a table of namespace = get|set|both"
        elif access not in _PRIVILEGES:
            return f"unknown access {access!r} (roster, message, presence, iq)"
        elif value not in _PRIVILEGES[access]:
            return f"{access} must be one of {', '.join(_PRIVILEGES[access])}, got {value!r}"
    return None
