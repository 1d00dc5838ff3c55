"""XMPP Ping (XEP-0199 §4.2): the server answers pings addressed to it."""

from nitro.core.module import Module
from nitro.core.router import StanzaEvent
from nitro.xmpp import ns
from nitro.xmpp.stanza import iq_result


def load(module: Module) -> None:
    module.add_feature(ns.PING)

    async def on_ping(event: StanzaEvent) -> bool:
        await event.reply(iq_result(event.stanza))
        return True

    module.hook(f"iq-get/host/{ns.PING}:ping", on_ping)
