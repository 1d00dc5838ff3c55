"""The smallest complete plugin: a component that echoes every message sent to its domain, answers a
version query (XEP-0092) so a client can see it is there, and — only when its option `block = "word"` is
set — a filter hook on every routed message: a message whose body contains the word is refused with
<policy-violation/>; everything else passes. Without `block` no filter is registered, so the server does
not hold every message for a verdict that can only be "pass"."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from slixmpp import Iq, Message

from nitro.sdk import Drop, Pass, Plugin, PluginSettings, Verdict

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


async def block(stanza: ET.Element) -> Verdict:
    body = stanza.findtext("{jabber:client}body")
    word = options.get("block")
    if word and body and word in body:
        return Drop("policy-violation", f"messages with {word!r} are not allowed here")
    return Pass()


plugin_prefix: dict[str, str] = {}  # domain → the `prefix` option of its [plugins.NAME] table
options: dict[str, str] = {}  # the last started instance's options (one echo per process is the norm)


async def main(settings: PluginSettings) -> None:
    """The entry every plugin exposes: the supervisor awaits it (inprocess) or `__main__` runs it."""
    plugin_prefix[settings.subdomain] = str(settings.option("prefix", "echo: "))
    options.update({key: str(value) for key, value in settings.options.items()})
    if options.get("block") and not plugin.has_filter("message", block):
        plugin.filter("message")(block)
    await plugin.main(settings)
