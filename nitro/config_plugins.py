"""The plugin tables of the configuration (nitro/bridge): `[plugins]`, the XEP-0114 listener's keys, and one
`[plugins.NAME]` sub-table per plugin, whose keys the core does not read are the plugin's own options.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# -- plugins over TCP (nitro/bridge): the XEP-0114 listener and one [plugins.NAME] table per plugin ------
PLUGIN_MODES = ("inprocess", "process", "external")
# the keys of [plugins.NAME] the core reads; every other key is the plugin's own (`options`)
_PLUGIN_CORE_KEYS = frozenset(
    {"mode", "subdomain", "secret", "module", "priority", "filter_timeout", "failure_policy", "observe_queue"}
    | {"privileges", "delegations", "delegation_timeout", "spool", "jetstream"}
)


@dataclass(frozen=True, slots=True)
class PluginSection:
    """One `[plugins.NAME]` table: how the plugin runs, the subdomain it serves and its handshake secret;
    every other key of the table is the plugin's own (`options`, read by the plugin through the SDK)."""

    name: str
    mode: str = "inprocess"  # inprocess | process | external
    subdomain: str = ""
    secret: str = ""
    module: str = ""  # the Python module run as `python -m MODULE`; "" means plugins.NAME
    priority: int = 0  # its filter hooks run before those of plugins with a lower priority
    filter_timeout: float = 2.0  # seconds a filter verdict may take before failure_policy applies
    failure_policy: str = "open"  # a filter that times out, fails or is down: "open" passes, "closed" drops
    observe_queue: int = 10000  # observe events held for it (while slow or down); past it they are counted
    spool: str = ""  # a directory: its observe events are kept on disk until acknowledged (survive restarts)
    jetstream: str = ""  # a NATS URL: the same, in the JetStream stream nitro_plugin_NAME instead
    # XEP-0356 in the XEP's vocabulary: roster = none|get|set|both, message = none|outgoing,
    # iq = { NAMESPACE = get|set|both }; anything not granted is <forbidden/>
    privileges: dict[str, Any] = field(default_factory=dict, hash=False)
    delegations: tuple[str, ...] = ()  # XEP-0355: IQ namespaces of the server it answers instead
    delegation_timeout: float = (
        10.0  # seconds a delegated IQ waits for the plugin; then the client gets an error
    )
    options: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def module_name(self) -> str:
        return self.module or f"plugins.{self.name}"


@dataclass(frozen=True, slots=True)
class PluginsSection:
    """`[plugins]`: the component listener (XEP-0114) and, as sub-tables, the plugins."""

    host: str = "127.0.0.1"
    port: int = 5347  # the conventional component port; 0 picks a free one
    allowed_peers: tuple[str, ...] = ()  # non-loopback addresses or networks that may connect
    handshake_timeout: float = 10.0  # seconds from accept to a verified <handshake/>
    queue_max: int = 1000  # stanzas held per plugin while it is down; past it, service-unavailable
    queue_timeout: float = 30.0  # seconds a held stanza waits for its plugin before service-unavailable
    ping_interval: float = 30.0  # a link silent this long gets a health ping (XEP-0199)
    ping_timeout: float = 10.0  # a link whose plugin does not answer a ping in time is closed
    stop_timeout: float = 5.0  # seconds a `process` plugin has after SIGTERM before SIGKILL
    stanzas_per_second: float = 0.0  # what one plugin link may route (burst: one second's worth); 0: no cap
    entries: tuple[PluginSection, ...] = ()  # from the [plugins.NAME] sub-tables, in file order

    @classmethod
    def from_table(
        cls,
        table: dict[str, Any],
        where: str,
        convert: Callable[[Any, Any, str], Any],
        error: type[Exception],
    ) -> PluginsSection:
        """Scalars are the listener's keys; each sub-table is a plugin (its unknown keys are its options)."""
        hints = typing.get_type_hints(cls)
        entry_hints = typing.get_type_hints(PluginSection)
        values: dict[str, Any] = {}
        entries: list[PluginSection] = []
        for key, value in table.items():
            if isinstance(value, dict):
                core = {
                    k: convert(v, entry_hints[k], f"{where}.{key}.{k}")
                    for k, v in value.items()
                    if k in _PLUGIN_CORE_KEYS
                }
                options = {k: v for k, v in value.items() if k not in _PLUGIN_CORE_KEYS}
                entries.append(PluginSection(name=key, options=options, **core))
            elif key in hints and key != "entries":
                values[key] = convert(value, hints[key], f"{where}.{key}")
            else:
                known = ", ".join(k for k in hints if k != "entries")
                raise error(f"{where}: unknown key {key!r} (known: {known}, or a [plugins.NAME] table)")
        return cls(**values, entries=tuple(entries))

    def entry(self, name: str) -> PluginSection | None:
        return next((entry for entry in self.entries if entry.name == name), None)
