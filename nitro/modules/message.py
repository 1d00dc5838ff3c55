"""Message delivery to local accounts (RFC 6121 §8.5), hooked at low priority like Prosody's mod_message.

Carbons, blocking and archiving hook the same events above DELIVERY_PRIORITY and see each message first.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

from lxml import etree

from nitro.core.module import Module
from nitro.core.router import StanzaEvent
from nitro.core.sessions import Resource
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.jid import JID

if TYPE_CHECKING:
    from nitro.core.context import Core

log = logging.getLogger(__name__)

DELIVERY_PRIORITY = -100

MessageType = Literal["chat", "error", "groupchat", "headline", "normal"]
_TYPES: dict[str | None, MessageType] = {t: t for t in ("chat", "error", "groupchat", "headline", "normal")}


def message_type(stanza: etree._Element) -> MessageType:
    """RFC 6121 §5.2.2: a message without a 'type', or with one we do not know, is 'normal'."""
    return _TYPES.get(stanza.get("type"), "normal")


def top_resources(server: Core, bare: JID) -> list[Resource]:
    """The available resources of highest non-negative priority (RFC 6121 §8.5.2.1.1).

    Both chat and normal messages to the bare JID go to these only, as in Prosody (`top_resources` in
    sessionmanager.lua, used by mod_message.lua) and ejabberd (`ejabberd_sm:route_message`); copies to
    the other resources are Message Carbons' job (XEP-0280).
    """
    eligible = [r for r in server.sessions.resources(bare) if r.available and r.priority >= 0]
    if not eligible:
        return []
    highest = max(r.priority for r in eligible)
    return [r for r in eligible if r.priority == highest]


def _send(server: Core, to: JID, stanza: etree._Element) -> None:
    if server.deliver(to, stanza):
        log.debug("message %s from %s delivered to %s", stanza.get("id"), stanza.get("from"), to)


async def deliver_to_bare(event: StanzaEvent, *, addressed_to_full: bool = False) -> None:
    """RFC 6121 §8.5.2 (and §8.5.3.2.1 for a full JID whose resource is not connected)."""
    assert event.to is not None
    assert event.to.local is not None
    bare = event.to.bare
    kind = message_type(event.stanza)
    if kind == "error":
        return  # §8.5.2.1.1, §8.5.2.2.1, RFC 6120 §8.3.1: never answer an error
    if kind == "groupchat":
        raise StanzaError("service-unavailable", "this is not a chat room")  # §8.5.2.1.1, §8.5.2.2.1
    if kind == "headline":
        # §8.5.2.1.1: to every non-negative available resource; §8.5.2.2.1 and §8.5.3.2.1: otherwise dropped.
        if not addressed_to_full:
            for resource in event.server.sessions.resources(bare):
                if resource.available and resource.priority >= 0:
                    _send(event.server, resource.jid, event.stanza)
        return
    recipients = top_resources(event.server, bare)
    if recipients:
        for resource in recipients:
            _send(event.server, resource.jid, event.stanza)
        return
    # §8.5.2.2.1: no available resource with a non-negative priority; §8.5.1 if there is no such user.
    exists = await event.server.storage.accounts.exists(event.to.local)
    if not exists:
        raise StanzaError("service-unavailable")
    if await event.server.bus.fire("message/offline", event):
        return
    raise StanzaError("service-unavailable")  # no offline storage (XEP-0160 §1, RFC 6121 §8.5.2.2.1)


def load(module: Module) -> None:
    async def on_bare(event: StanzaEvent) -> bool:
        await deliver_to_bare(event)
        return True

    async def on_full(event: StanzaEvent) -> bool:
        assert event.to is not None
        if event.server.deliver(event.to, event.stanza):
            return True  # §8.5.3.1: the connected resource gets it, whatever its priority
        await deliver_to_bare(event, addressed_to_full=True)  # §8.5.3.2.1
        return True

    async def on_host(event: StanzaEvent) -> bool:
        # A message to the server that no module handled: Prosody's stanza_router.lua
        # (handle_unhandled_stanza) answers service-unavailable to anything but an error.
        if message_type(event.stanza) != "error":
            raise StanzaError("service-unavailable")
        return True

    module.hook("message/bare", on_bare, priority=DELIVERY_PRIORITY)
    module.hook("message/full", on_full, priority=DELIVERY_PRIORITY)
    module.hook("message/host", on_host, priority=DELIVERY_PRIORITY)
