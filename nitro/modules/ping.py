"""XMPP Ping (XEP-0199 §4.2): the server answers pings addressed to it, and to an account's bare JID.

A ping with no 'to', or to a bare JID, is for an account, which the server answers on its behalf (RFC 6120
§10.3.3, RFC 6121 §8.5.1; Prosody and ejabberd do the same); clients such as profanity ping that way.
"""

from nitro.core.module import Module
from nitro.core.router import StanzaEvent
from nitro.storage.errors import StorageUnavailable
from nitro.xmpp import ns
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.stanza import iq_result


class Ping:
    def __init__(self, module: Module) -> None:
        self.accounts = module.server.storage.accounts

    async def on_ping(self, event: StanzaEvent) -> bool:
        await event.reply(iq_result(event.stanza))
        return True

    async def on_account_ping(self, event: StanzaEvent) -> bool:
        if event.to_type == "bare":  # another user's account; one's own ("self") exists
            assert event.to is not None
            assert event.to.local is not None
            try:
                exists = await self.accounts.exists(event.to.local)
            except StorageUnavailable as exc:
                raise StanzaError("internal-server-error", "storage is unavailable", type="wait") from exc
            if not exists:
                raise StanzaError("service-unavailable")  # RFC 6121 §8.5.1: no such user
        return await self.on_ping(event)


def load(module: Module) -> None:
    module.add_feature(ns.PING)
    ping = Ping(module)
    module.hook(f"iq-get/host/{ns.PING}:ping", ping.on_ping)
    module.hook(f"iq-get/bare/{ns.PING}:ping", ping.on_account_ping)  # the router fires it for "self" too
