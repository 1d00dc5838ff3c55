"""The only reader of TOML: the document becomes the typed sections of `config_sections` (re-exported
here); an unknown key is a ConfigError, and so is any problem `config_checks` finds in the values.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import make_url

from nitro.config_checks import ConfigError, is_loopback, validate
from nitro.config_plugins import PluginSection, PluginsSection
from nitro.config_sections import (
    AdminSection,
    ArchiveSection,
    AuthSection,
    BoshSection,
    C2SSection,
    CacheSection,
    ClusterSection,
    Config,
    GCSection,
    HttpSection,
    LimitsSection,
    LoggingSection,
    MetricsSection,
    ModulesSection,
    OfflineSection,
    PepSection,
    PrivateSection,
    RedisInstance,
    RedisSection,
    RegistrationSection,
    RosterSection,
    RuntimeSection,
    ServerSection,
    StorageSection,
    StreamManagementSection,
    TLSSection,
    VCardSection,
)

__all__ = [
    "AdminSection",
    "ArchiveSection",
    "AuthSection",
    "BoshSection",
    "C2SSection",
    "CacheSection",
    "ClusterSection",
    "Config",
    "ConfigError",
    "GCSection",
    "HttpSection",
    "LimitsSection",
    "LoggingSection",
    "MetricsSection",
    "ModulesSection",
    "OfflineSection",
    "PepSection",
    "PluginSection",
    "PluginsSection",
    "PrivateSection",
    "RedisInstance",
    "RedisSection",
    "RegistrationSection",
    "RosterSection",
    "RuntimeSection",
    "ServerSection",
    "StorageSection",
    "StreamManagementSection",
    "TLSSection",
    "VCardSection",
    "is_loopback",
    "load_config",
    "parse_config",
    "resolve_sqlite_dsn",
]


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
    if cls is PluginsSection:  # [plugins.NAME] sub-tables carry keys of their plugin's own
        return PluginsSection.from_table(table, where, _convert, ConfigError)  # type: ignore[return-value]
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    values = {key: _convert(value, hints[key], f"{where}.{key}") for key, value in table.items()}
    return cls(**values)


_NOT_SECTIONS = frozenset({"base_dir", "file"})


def parse_config(
    document: dict[str, Any], *, source: str = "<config>", base_dir: Path = Path(), file: Path | None = None
) -> Config:
    hints = typing.get_type_hints(Config)
    sections: dict[str, Any] = {}
    for name, table in document.items():
        annotation = hints.get(name)
        if name in _NOT_SECTIONS or annotation is None or isinstance(annotation, types.GenericAlias):
            known = ", ".join(f.name for f in dataclasses.fields(Config) if f.name not in _NOT_SECTIONS)
            raise ConfigError(f"{source}: unknown section [{name}] (known: {known})")
        sections[name] = _section(annotation, table, f"{source}: [{name}]")
    config = Config(**sections, base_dir=base_dir, file=file)
    validate(config, source)
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
    return parse_config(document, source=str(path), base_dir=path.absolute().parent, file=path)
