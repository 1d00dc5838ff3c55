"""What a plugin needs to connect: read from the Nitro config it shares with the server (`[plugins]` and
its `[plugins.NAME]` table), so moving a plugin between modes changes no code."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nitro.config import Config, ConfigError, load_config

_ANY_ADDRESS = ("0.0.0.0", "::", "")  # noqa: S104 (a listener on every address is reached on loopback)


@dataclass(frozen=True, slots=True)
class PluginSettings:
    """One plugin's connection and options: `options` holds the keys of its table the core does not use."""

    name: str
    subdomain: str
    secret: str
    core_host: str = "127.0.0.1"
    core_port: int = 5347
    server_domain: str = "localhost"
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    config: Config | None = field(default=None, compare=False, hash=False, repr=False)

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


def settings_from_config(config: Config, name: str) -> PluginSettings:
    """The settings of `[plugins.NAME]` in a loaded config (ConfigError if there is no such table)."""
    entry = config.plugins.entry(name)
    if entry is None:
        raise ConfigError(f"no [plugins.{name}] table in the configuration")
    host = config.plugins.host
    return PluginSettings(
        name=name,
        subdomain=entry.subdomain,
        secret=entry.secret,
        core_host="127.0.0.1" if host in _ANY_ADDRESS else host,
        core_port=config.plugins.port,
        server_domain=config.server.domain,
        options=dict(entry.options),
        config=config,
    )


def load_settings(config_path: Path | str, name: str, core: str | None = None) -> PluginSettings:
    """Read `config_path` (the server's TOML) for plugin `name`; `core` ("HOST:PORT" or "HOST") overrides
    where the core listens, for a plugin on another machine or a listener on port 0."""
    settings = settings_from_config(load_config(Path(config_path)), name)
    if core:
        host, _, port = core.rpartition(":")
        if not port.isdigit():  # no port given
            host, port = core, ""
        settings = dataclasses.replace(
            settings,
            core_host=host.strip("[]") or settings.core_host,
            core_port=int(port or settings.core_port),
        )
    return settings
