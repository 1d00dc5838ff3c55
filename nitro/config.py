"""The only reader of TOML: typed configuration sections with defaults; an unknown key is an error."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nitro.jid import JID, InvalidJID


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, key and reason."""


@dataclass(frozen=True, slots=True)
class ServerSection:
    domain: str = "localhost"
    admins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StorageSection:
    dsn: str = "sqlite+aiosqlite:///var/nitro.db"


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


@dataclass(frozen=True, slots=True)
class GCSection:
    """Garbage collection of the server process: what is alive after start-up is frozen out of
    collections, and generation 0 runs far less often than CPython's default of 700 allocations."""

    freeze_after_start: bool = True
    threshold0: int = 50000
    threshold1: int = 20
    threshold2: int = 100


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
    gc: GCSection = field(default_factory=GCSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    base_dir: Path = Path()

    def path(self, relative: str) -> Path:
        """A path from the config, relative to the directory Nitro was started in."""
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
    return config


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
    if config.c2s.max_stanza_bytes < 10_000:
        raise ConfigError(f"{source}: [c2s].max_stanza_bytes must be at least 10000 (RFC 6120 §13.12)")
    if config.archive.default not in {"always", "never", "roster"}:
        raise ConfigError(f"{source}: [archive].default must be always, never or roster")
    if min(config.gc.threshold0, config.gc.threshold1, config.gc.threshold2) < 1:
        raise ConfigError(f"{source}: [gc] thresholds must be at least 1")
    if config.logging.level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"{source}: [logging].level must be DEBUG, INFO, WARNING or ERROR")


def load_config(path: Path | None) -> Config:
    """Load `path` (or the built-in defaults when None); paths inside are relative to the working dir."""
    if path is None:
        return parse_config({})
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(document, source=str(path))
