"""The plugin SDK: a thin typed layer on slixmpp's ComponentXMPP (see plugins/README.md)."""

from nitro.sdk.hooks import Drop, Observed, Pass, Replace, Verdict
from nitro.sdk.plugin import Plugin
from nitro.sdk.settings import PluginSettings, load_settings, settings_from_config

__all__ = [
    "Drop",
    "Observed",
    "Pass",
    "Plugin",
    "PluginSettings",
    "Replace",
    "Verdict",
    "load_settings",
    "settings_from_config",
]
