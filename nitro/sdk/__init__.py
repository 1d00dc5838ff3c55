"""The plugin SDK: a thin typed layer on slixmpp's ComponentXMPP (see plugins/README.md)."""

from nitro.sdk.plugin import Plugin
from nitro.sdk.settings import PluginSettings, load_settings, settings_from_config

__all__ = ["Plugin", "PluginSettings", "load_settings", "settings_from_config"]
