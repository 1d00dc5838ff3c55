"""Software Version (XEP-0092): name and version of the server; the OS is not disclosed."""

import nitro
from nitro.core.module import Module
from nitro.core.router import StanzaEvent
from nitro.xmpp import ns
from nitro.xmpp.stanza import child, element, iq_result


def load(module: Module) -> None:
    module.add_feature(ns.VERSION)

    async def on_version(event: StanzaEvent) -> bool:
        query = element(ns.VERSION, "query")
        child(query, ns.VERSION, "name", "Nitro")
        child(query, ns.VERSION, "version", nitro.__version__)
        await event.reply(iq_result(event.stanza, query))
        return True

    module.hook(f"iq-get/host/{ns.VERSION}:query", on_version)
