"""The only reader of TOML: typed configuration sections with defaults; an unknown key is an error."""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import make_url

from nitro.config_ranges import range_problems
from nitro.storage.ring.keys import PREFIX
from nitro.xmpp.jid import JID, InvalidJID


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, key and reason."""


@dataclass(frozen=True, slots=True)
class ServerSection:
    domain: str = "localhost"
    admins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StorageSection:
    dsn: str = "sqlite+aiosqlite:///var/nitro.db"
    # MariaDB/MySQL only (SQLite has one file and no pool): see config/nitro.toml.
    pool_size: int = 10
    max_overflow: int = 20
    pool_timeout: float = 10.0
    pool_recycle: float = 3600.0
    pool_pre_ping: bool = True
    connect_timeout: float = 5.0
    query_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class C2SSection:
    host: str = "127.0.0.1"
    port: int = 5222
    direct_tls_port: int = 5223
    backlog: int = 4096
    require_encryption: bool = True
    allow_plain_without_tls: bool = False
    max_stanza_bytes: int = 262144
    negotiation_timeout: float = 60.0
    idle_ping_after: float = 300.0
    ping_timeout: float = 60.0
    keepalive_interval: float = 120.0
    write_timeout: float = 30.0
    release_parser_after: float = 5.0
    max_resources_per_account: int = 10


@dataclass(frozen=True, slots=True)
class TLSSection:
    cert: str = "var/tls/cert.pem"
    key: str = "var/tls/key.pem"
    generate: bool = True


@dataclass(frozen=True, slots=True)
class AuthSection:
    max_failures_per_stream: int = 3
    throttle_failures: int = 5
    throttle_window: float = 60.0
    scram_iterations: int = 4096


@dataclass(frozen=True, slots=True)
class RegistrationSection:
    open: bool = True
    min_password_length: int = 6
    max_per_address: int = 5
    window: float = 60.0


@dataclass(frozen=True, slots=True)
class OfflineSection:
    quota: int = 1000


@dataclass(frozen=True, slots=True)
class StreamManagementSection:
    resume_timeout: float = 300.0
    ack_request_every: int = 5
    max_unacked: int = 5000
    max_unacked_bytes: int = 1024 * 1024  # per session, serialised size of the queued stanzas
    max_unacked_bytes_total: int = 256 * 1024 * 1024  # all sessions of this process together


@dataclass(frozen=True, slots=True)
class ArchiveSection:
    default: str = "always"
    retention_days: int = 0
    max_page_size: int = 250


@dataclass(frozen=True, slots=True)
class PepSection:
    max_item_bytes: int = 131072
    max_items_per_node: int = 256


@dataclass(frozen=True, slots=True)
class VCardSection:
    max_bytes: int = 131072


@dataclass(frozen=True, slots=True)
class ModulesSection:
    disabled: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LoggingSection:
    level: str = "INFO"
    format: str = "text"


@dataclass(frozen=True, slots=True)
class MetricsSection:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 5290
    token: str = ""
    lag_interval: float = 0.1


@dataclass(frozen=True, slots=True)
class RedisInstance:
    """One instance of the ring: a URL ("redis://host:port/db") and its share of the keys."""

    SHORTHAND: typing.ClassVar[str] = "url"  # a plain string in the list is the url

    url: str = ""
    weight: int = 1


@dataclass(frozen=True, slots=True)
class RedisSection:
    instances: tuple[RedisInstance, ...] = ()
    prefix: str = "nitro"
    health_interval: float = 1.0
    health_timeout: float = 0.5
    failures_before_out: int = 2
    socket_timeout: float = 1.0
    value_ttl: float = 3600.0
    generation_ttl: float = 86400.0
    session_ttl: float = 30.0


@dataclass(frozen=True, slots=True)
class CacheSection:
    max_entries: int = 100_000
    max_bytes: int = 64 * 1024 * 1024
    ttl: float = 300.0


@dataclass(frozen=True, slots=True)
class GCSection:
    """Garbage collection of the server process: what is alive after start-up is frozen out of
    collections, and generation 0 runs far less often than CPython's default of 700 allocations."""

    freeze_after_start: bool = True
    threshold0: int = 50000
    threshold1: int = 20
    threshold2: int = 100


@dataclass(frozen=True, slots=True)
class LimitsSection:
    """What one client connection may cost (nitro/transports/limits.py; see config/nitro.toml)."""

    bytes_per_second: int = 10_000  # 0: no byte rate
    stanzas_per_second: float = 50.0  # in cost units (most stanzas cost 1); 0: no stanza rate
    burst_seconds: float = 2.0
    max_connections_per_address: int = 100  # 0: no cap
    exempt_addresses: tuple[str, ...] = ()  # addresses and networks the per-address cap leaves alone
    max_names_before_auth: int = 256  # distinct XML names an unauthenticated stream may use
    preauth_streams_per_thread: int = 64  # 0: parse unauthenticated streams on the event loop's thread


@dataclass(frozen=True, slots=True)
class RuntimeSection:
    uvloop: bool = True  # uvloop as the event loop when it is installed; false: asyncio's own


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerSection = field(default_factory=ServerSection)
    storage: StorageSection = field(default_factory=StorageSection)
    c2s: C2SSection = field(default_factory=C2SSection)
    tls: TLSSection = field(default_factory=TLSSection)
    auth: AuthSection = field(default_factory=AuthSection)
    registration: RegistrationSection = field(default_factory=RegistrationSection)
    offline: OfflineSection = field(default_factory=OfflineSection)
    stream_management: StreamManagementSection = field(default_factory=StreamManagementSection)
    archive: ArchiveSection = field(default_factory=ArchiveSection)
    pep: PepSection = field(default_factory=PepSection)
    vcard: VCardSection = field(default_factory=VCardSection)
    modules: ModulesSection = field(default_factory=ModulesSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    redis: RedisSection = field(default_factory=RedisSection)
    cache: CacheSection = field(default_factory=CacheSection)
    gc: GCSection = field(default_factory=GCSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    base_dir: Path = Path()

    def path(self, relative: str) -> Path:
        """A path from the config: relative ones are relative to the config file's directory (`base_dir`;
        the working directory when Nitro runs on its built-in defaults)."""
        return self.base_dir / relative

    @property
    def admin_jids(self) -> frozenset[JID]:
        return frozenset(JID.parse(admin).bare for admin in self.server.admins)


_T = TypeVar("_T")


def _convert(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        return tuple(_convert(item, item_type, f"{where}[{i}]") for i, item in enumerate(value))
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        shorthand = getattr(annotation, "SHORTHAND", None)
        table = {shorthand: value} if shorthand is not None and isinstance(value, str) else value
        return _section(annotation, table, where)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def _section(cls: type[_T], table: Any, where: str) -> _T:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    values = {key: _convert(value, hints[key], f"{where}.{key}") for key, value in table.items()}
    return cls(**values)


def parse_config(document: dict[str, Any], *, source: str = "<config>", base_dir: Path = Path()) -> Config:
    hints = typing.get_type_hints(Config)
    sections: dict[str, Any] = {}
    for name, table in document.items():
        annotation = hints.get(name)
        if name == "base_dir" or annotation is None or isinstance(annotation, types.GenericAlias):
            known = ", ".join(f.name for f in dataclasses.fields(Config) if f.name != "base_dir")
            raise ConfigError(f"{source}: unknown section [{name}] (known: {known})")
        sections[name] = _section(annotation, table, f"{source}: [{name}]")
    config = Config(**sections, base_dir=base_dir)
    _validate(config, source)
    dsn = resolve_sqlite_dsn(config.storage.dsn, base_dir)
    return dataclasses.replace(config, storage=dataclasses.replace(config.storage, dsn=dsn))


def resolve_sqlite_dsn(dsn: str, base_dir: Path) -> str:
    """A SQLite DSN whose relative file path is made relative to `base_dir` (the config file's directory);
    any other DSN, in-memory and `file:` URI databases, and absolute paths are returned unchanged."""
    url = make_url(dsn)
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return dsn
    if database.startswith("file:") or Path(database).is_absolute() or base_dir == Path():
        return dsn
    return url.set(database=str(base_dir / database)).render_as_string(hide_password=False)


def _validate(config: Config, source: str) -> None:
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
    if config.archive.default not in {"always", "never", "roster"}:
        raise ConfigError(f"{source}: [archive].default must be always, never or roster")
    _validate_storage(config.storage, source)
    if min(config.gc.threshold0, config.gc.threshold1, config.gc.threshold2) < 1:
        raise ConfigError(f"{source}: [gc] thresholds must be at least 1")
    if config.logging.level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"{source}: [logging].level must be DEBUG, INFO, WARNING or ERROR")
    _validate_observability(config, source)
    _validate_tiers(config, source)
    _validate_limits(config, source)


def _validate_limits(config: Config, source: str) -> None:
    for entry in config.limits.exempt_addresses:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise ConfigError(
                f"{source}: [limits].exempt_addresses: {entry!r} is not an address or network"
            ) from exc


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


def load_config(path: Path | None) -> Config:
    """Load `path` (or the built-in defaults when None). Relative paths inside it (TLS files, the SQLite
    database) are relative to the file's own directory, so every command finds the same files wherever
    it is run from; the built-in defaults are relative to the working directory."""
    if path is None:
        return parse_config({})
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(document, source=str(path), base_dir=path.absolute().parent)
