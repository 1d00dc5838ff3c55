"""Entity Time (XEP-0202): the server's clock, in UTC."""

import datetime

from nitro.core.module import Module
from nitro.core.router import StanzaEvent
from nitro.xmpp import ns
from nitro.xmpp.stanza import child, element, iq_result, utc_stamp


def load(module: Module) -> None:
    module.add_feature(ns.TIME)

    async def on_time(event: StanzaEvent) -> bool:
        payload = element(ns.TIME, "time")
        child(payload, ns.TIME, "tzo", "+00:00")
        child(payload, ns.TIME, "utc", utc_stamp(datetime.datetime.now(datetime.UTC)))
        await event.reply(iq_result(event.stanza, payload))
        return True

    module.hook(f"iq-get/host/{ns.TIME}:time", on_time)
