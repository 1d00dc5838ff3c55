"""XMPP Ping (XEP-0199 §4.2): the server answers pings addressed to it."""

from nitro import ns
from nitro.module import Module
from nitro.router import StanzaEvent
from nitro.stanza import iq_result


def load(module: Module) -> None:
    module.add_feature(ns.PING)

    async def on_ping(event: StanzaEvent) -> bool:
        await event.reply(iq_result(event.stanza))
        return True

    module.hook(f"iq-get/host/{ns.PING}:ping", on_ping)
