"""SIGHUP and `nitro reload`: read the config file again and apply what can change while serving.

The new `Config` replaces `server.config`, except for the settings that only a restart can change
(ports, storage, domain, Redis, …): those keep their running values and are named in a WARNING line.
Then the state derived from the configuration is applied again: the TLS certificate (loaded into the
live SSL context, so STARTTLS and the Direct TLS listener both use it for new handshakes), the log
level, the login throttle, the modules whose settings changed, and the modules enabled or disabled.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from nitro.config import Config, ConfigError, load_config
from nitro.core.context import Core
from nitro.core.module import BUILTIN_MODULES, load_module
from nitro.observe.logs import configure as configure_logging

if TYPE_CHECKING:
    from nitro.core.module import Module

log = logging.getLogger(__name__)

TlsFactory = Callable[[Config], ssl.SSLContext | None]

# Sections taken from the new file as they are (their readers look at `server.config` when they act).
RELOADED = (
    "tls",
    "auth",
    "registration",
    "offline",
    "stream_management",
    "archive",
    "vcard",
    "logging",
    "limits",
)
# Sections and keys that keep their running values: sockets, storage and caches are opened once.
RESTART_ONLY = ("storage", "pep", "metrics", "redis", "cache", "gc", "runtime", "admin", "plugins")
C2S_RESTART_ONLY = ("host", "port", "direct_tls_port", "backlog")  # the rest applies to new connections
SERVER_RESTART_ONLY = ("domain",)
# Modules that read their section once, when loaded: loaded again when it changes.
MODULE_OF_SECTION = {"registration": "register", "archive": "mam"}
# Modules that can be loaded or unloaded while serving: they keep no state in sessions or in memory
# that others rely on (register's per-address counters start over). The others need a restart.
TOGGLE_SAFE = frozenset(
    {"ping", "version", "time", "legacy_session", "register", "admin_commands", "mam", "vcard", "private"}
)


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What a reload did: keys applied, keys that need a restart, what failed; `error` if nothing was."""

    applied: tuple[str, ...] = ()
    restart_needed: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    error: str | None = None
    certificate: str | None = None  # the certificate file read again (every reload reads it: renewals)


class Running(Core, Protocol):
    """The running server as the admin channel and reload see it (nitro/server.py): the façade modules see,
    plus what a reload replaces."""

    config: Config  # settable here: a reload swaps it
    tls_context: ssl.SSLContext | None
    modules: dict[str, Module]
    reloads: int

    def reload(self) -> ReloadReport: ...


def reload_config(server: Running, make_tls: TlsFactory) -> ReloadReport:
    """Re-read `server.config.file` and apply it; an unreadable or invalid file changes nothing."""
    old = server.config
    if old.file is None:
        return ReloadReport(error="the configuration was not read from a file: nothing to reload")
    try:
        new = load_config(old.file)
    except ConfigError as exc:
        log.error("reload refused, the running configuration stays: %s", exc)
        return ReloadReport(error=str(exc))
    merged, restart_needed = _merge(old, new)
    applied = [key for section in (*RELOADED, "c2s", "server") for key in _changes(old, merged, section)]
    failed: list[str] = []
    certificate, tls_failure = _apply_tls(server, merged, make_tls, applied, restart_needed)
    failed.extend(tls_failure)
    server.config = merged
    _apply_logging(old, merged)
    server.auth_throttle.limit = merged.auth.throttle_failures
    server.auth_throttle.window = merged.auth.throttle_window
    failed.extend(_apply_modules(server, old, merged, applied))
    server.reloads += 1
    restart_needed.sort(key=_config_order)
    applied.sort(key=_config_order)
    if restart_needed:
        log.warning("configuration reloaded; these need a restart to change: %s", ", ".join(restart_needed))
    log.info("configuration reloaded from %s: %s", old.file, ", ".join(applied) or "nothing changed")
    for failure in failed:
        log.error("reload: %s", failure)
    return ReloadReport(tuple(applied), tuple(restart_needed), tuple(failed), certificate=certificate)


_SECTIONS = [field.name for field in dataclasses.fields(Config)]


def _config_order(key: str) -> int:
    """Keys as "[section].name" in the order of the sections in the file; other notes after them."""
    section = key[1:].partition("]")[0] if key.startswith("[") else ""
    return _SECTIONS.index(section) if section in _SECTIONS else len(_SECTIONS)


def _merge(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The new configuration with the running values of what a restart alone can change."""
    restart: list[str] = []
    kept: dict[str, Any] = {}
    for section in RESTART_ONLY:
        restart.extend(_changes(old, new, section))
        kept[section] = getattr(old, section)
    c2s = _keep(old.c2s, new.c2s, C2S_RESTART_ONLY, "c2s", restart)
    server = _keep(old.server, new.server, SERVER_RESTART_ONLY, "server", restart)
    disabled = []
    for name in BUILTIN_MODULES:
        wanted, running = name in new.modules.disabled, name in old.modules.disabled
        if wanted != running and name not in TOGGLE_SAFE:
            restart.append(f"[modules].disabled: {name}")
            wanted = running
        if wanted:
            disabled.append(name)
    modules = dataclasses.replace(new.modules, disabled=tuple(disabled))
    merged = dataclasses.replace(
        new, **kept, c2s=c2s, server=server, modules=modules, base_dir=old.base_dir, file=old.file
    )
    return merged, restart


def _keep(old: Any, new: Any, keys: Iterable[str], section: str, restart: list[str]) -> Any:
    running = {key: getattr(old, key) for key in keys}
    restart.extend(f"[{section}].{key}" for key, value in running.items() if getattr(new, key) != value)
    return dataclasses.replace(new, **running)


def _changes(old: Config, new: Config, section: str) -> list[str]:
    before, after = getattr(old, section), getattr(new, section)
    return [
        f"[{section}].{field.name}"
        for field in dataclasses.fields(before)
        if getattr(before, field.name) != getattr(after, field.name)
    ]


def _apply_tls(
    server: Running, config: Config, make_tls: TlsFactory, applied: list[str], restart: list[str]
) -> tuple[str | None, list[str]]:
    """The certificate read again on every reload (a renewal keeps the paths): the path read, failures.
    A broken certificate or key is refused and the running one stays."""
    try:
        fresh = make_tls(config)  # checks the pair before the live context is touched
    except (OSError, ssl.SSLError, ValueError, ConfigError) as exc:  # TLSMaterialError names the file
        return None, [f"TLS certificate not reloaded, the running one stays: {exc}"]
    cert, key = config.path(config.tls.cert), config.path(config.tls.key)
    if fresh is None:
        if server.tls_context is not None:
            return None, [f"no certificate at {cert}: the running one stays"]
        return None, []
    if server.tls_context is None:
        server.tls_context = fresh  # STARTTLS from now on; the Direct TLS listener is made at start
        applied.append("TLS on (STARTTLS)")
        if config.c2s.direct_tls_port:
            restart.append("[c2s].direct_tls_port (no listener without a certificate at start)")
        return str(cert), []
    # Into the live context: asyncio keeps the Direct TLS listener's context, so a new object would
    # serve STARTTLS only. Sessions already encrypted keep their own copy of the old certificate.
    server.tls_context.load_cert_chain(cert, key)
    return str(cert), []


def _apply_logging(old: Config, new: Config) -> None:
    if new.logging.format != old.logging.format:
        configure_logging(new.logging.level, new.logging.format)
    elif new.logging.level != old.logging.level:
        logging.getLogger().setLevel(new.logging.level.upper())


def _apply_modules(server: Running, old: Config, new: Config, applied: list[str]) -> list[str]:
    failed: list[str] = []
    reload = {
        MODULE_OF_SECTION[section]
        for section in MODULE_OF_SECTION
        if getattr(old, section) != getattr(new, section)
    }
    for name in BUILTIN_MODULES:  # in load order
        loaded = name in server.modules
        wanted = name not in new.modules.disabled
        if loaded and (not wanted or name in reload):
            server.modules.pop(name).unload()
            if not wanted:
                applied.append(f"module {name} unloaded")
        if wanted and (not loaded or name in reload):
            try:
                server.modules[name] = load_module(server, name)
            except Exception as exc:  # a module that cannot load must not stop the others
                log.exception("module %s failed to load", name)
                failed.append(f"module {name} not loaded: {exc}")
                continue
            applied.append(f"module {name} {'reloaded' if loaded else 'loaded'}")
    return failed
