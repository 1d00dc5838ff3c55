"""`nitro check` for [plugins]: each plugin's module can be found, and a listener open beyond loopback
does not accept plugins that still use a placeholder secret."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

from nitro.config import Config, is_loopback
from nitro.ops.findings import Finding, error, ok, warn


def check_plugins(config: Config) -> Iterator[Finding]:
    plugins = config.plugins
    for entry in plugins.entries:
        where = f"plugins: {entry.name} ({entry.mode}, {entry.subdomain})"
        if entry.mode == "external":
            yield ok(f"{where}: waited for on {plugins.host}:{plugins.port}")
        else:
            try:
                found = importlib.util.find_spec(entry.module_name) is not None
            except (ImportError, ValueError):
                found = False
            if found:
                yield ok(f"{where}: module {entry.module_name} found")
            else:
                yield error(f"{where}: no module {entry.module_name} on the Python path")
            if entry.mode == "process" and config.file is None:
                yield error(f"{where}: a process plugin needs the server to run with --config FILE")
        if not is_loopback(plugins.host) and "change me" in entry.secret:
            yield warn(
                f"{where}: the listener is reachable from {plugins.host} and the secret is a placeholder"
            )
