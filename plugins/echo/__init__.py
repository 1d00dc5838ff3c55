"""The smallest complete plugin: a component that echoes every message sent to its domain, and answers a
version query (XEP-0092) so a client can see it is there."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from slixmpp import Iq, Message

from nitro.sdk import Plugin, PluginSettings

plugin = Plugin("echo")


@plugin.message
async def echo(message: Message) -> None:
    if message["type"] in ("chat", "normal") and message["body"]:
        prefix = plugin_prefix.get(str(message["to"].domain), "echo: ")
        message.reply(f"{prefix}{message['body']}").send()


@plugin.iq("jabber:iq:version")
async def version(_iq: Iq) -> ET.Element:
    query = ET.Element("{jabber:iq:version}query")
    ET.SubElement(query, "{jabber:iq:version}name").text = "Nitro echo plugin"
    ET.SubElement(query, "{jabber:iq:version}version").text = "1"
    return query


plugin_prefix: dict[str, str] = {}  # domain → the `prefix` option of its [plugins.NAME] table


async def main(settings: PluginSettings) -> None:
    """The entry every plugin exposes: the supervisor awaits it (inprocess) or `__main__` runs it."""
    plugin_prefix[settings.subdomain] = str(settings.option("prefix", "echo: "))
    await plugin.main(settings)
