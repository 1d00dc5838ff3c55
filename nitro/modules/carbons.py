"""Message Carbons (XEP-0280 v1.0.1): every carbons-enabled resource of a user sees both sides of the user's
conversations, except messages marked `<private/>` (§9) or with the XEP-0334 `<no-copy/>` hint.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from lxml import etree

from nitro.core.module import Module
from nitro.core.router import StanzaEvent
from nitro.core.sessions import Resource
from nitro.modules.message import DELIVERY_PRIORITY, message_type, top_resources
from nitro.xmpp import ns
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.jid import JID
from nitro.xmpp.stanza import child, iq_result, stanza

if TYPE_CHECKING:
    from nitro.core.context import Core

CARBONS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"  # XEP-0297
HINTS = "urn:xmpp:hints"  # XEP-0334
MUC_USER = "http://jabber.org/protocol/muc#user"  # XEP-0045
# Payloads "typically used in IM" that make a bodiless message of type 'normal' worth copying, as in
# Prosody's mod_carbons: chat states (XEP-0085), receipts (XEP-0184), chat markers (XEP-0333).
IM_PAYLOADS = frozenset(
    {"http://jabber.org/protocol/chatstates", "urn:xmpp:receipts", "urn:xmpp:chat-markers:0"}
)

# Sent copies go out after blocking (+50) has refused what must not leave; received copies are computed
# just above delivery, which they must not pre-empt (message.py delivers at DELIVERY_PRIORITY).
SENT_PRIORITY = -50
RECEIVED_PRIORITY = DELIVERY_PRIORITY + 10

_PRIVATE = f"{{{CARBONS}}}private"
_NO_COPY = f"{{{HINTS}}}no-copy"
_WRAPPERS = (f"{{{CARBONS}}}sent", f"{{{CARBONS}}}received")


CARBONS_ON = "carbons"  # the Resource flag: this resource asked for carbons (§4), not disabled since (§5)


def enabled(resource: Resource) -> bool:
    return resource.has(CARBONS_ON)


def eligible(event: StanzaEvent, *, outbound: bool) -> bool:
    """§6, "Messages Eligible for Carbons Delivery": IM messages only, never private ones or copies."""
    message = event.stanza
    if message.find(_PRIVATE) is not None or message.find(_NO_COPY) is not None:
        return False  # §9 and XEP-0334 §4.3
    if any(message.find(wrapper) is not None for wrapper in _WRAPPERS):
        return False  # already a carbon: copying it again would loop (and it was not "sent" by us)
    kind = message_type(message)
    if kind in ("groupchat", "headline"):
        return False  # §6: sent by a MUC room; headlines are not conversations
    if not outbound and event.to_type == "full" and message.find(f"{{{MUC_USER}}}x") is not None:
        return False  # §6: a private message from a MUC occupant, to the joined resource only
    if kind == "chat":
        return True
    if kind == "error":
        # §6 allows bounces of eligible messages; like Prosody we recognise the usual case: an inbound
        # error from a bare JID, the answer to a chat the user sent to that bare JID.
        return not outbound and event.from_.resource is None
    if message.find(f"{{{ns.CLIENT}}}body") is not None:
        return True
    return any(etree.QName(node).namespace in IM_PAYLOADS for node in message if isinstance(node.tag, str))


def wrap(message: etree._Element, direction: str, user: JID, to: JID) -> etree._Element:
    """The copy for one resource (§7, §8): from the user's bare JID, the original forwarded inside."""
    carbon = stanza("message", from_=str(user), to=str(to))
    if (kind := message.get("type")) is not None:
        carbon.set("type", kind)  # "SHOULD maintain the same 'type'"
    forwarded = child(child(carbon, CARBONS, direction), FORWARD, "forwarded")
    forwarded.append(copy.deepcopy(message))
    return carbon


def receivers(server: Core, event: StanzaEvent) -> list[Resource]:
    """The resources that get the message itself under RFC 6121 §8.5, as nitro.modules.message decides."""
    assert event.to is not None
    if event.to_type == "full" and (resource := server.sessions.resource(event.to)) is not None:
        return [resource]  # §8.5.3.1
    if message_type(event.stanza) == "error":
        return []  # §8.5.2.1.1, §8.5.3.2.1: an error to the bare JID or to a gone resource is dropped
    return top_resources(server, event.to.bare)


def load(module: Module) -> None:
    server = module.server
    module.add_feature(CARBONS)

    async def on_toggle(event: StanzaEvent) -> bool:
        """§4, §5: enable or disable for the requesting resource; repeats are not errors (§10.1)."""
        session = event.origin
        if session is None:
            raise StanzaError("not-allowed", "carbons are for this server's own clients (XEP-0280 §4.1)")
        on = etree.QName(event.stanza[0]).localname == "enable"
        session.set_flag(CARBONS_ON, on)
        session.log.debug("carbons %s", "enabled" if on else "disabled")
        await event.reply(iq_result(event.stanza))
        return True

    async def on_sent(event: StanzaEvent) -> None:
        """§8: a copy to each other carbons-enabled resource of the sender, whether or not it has them on."""
        assert event.to is not None
        sender = event.from_
        if event.to.bare == sender.bare:
            return  # to one's own account: the recipient side (below) decides who sees it
        # Who would get a copy first: most senders have no other carbons-enabled resource, and that is
        # cheaper to learn than whether the message is eligible (§6's several lookups in the stanza).
        copies = [r for r in server.sessions.resources(sender.bare) if r.jid != sender and enabled(r)]
        if not copies or not eligible(event, outbound=True):
            return
        for resource in copies:
            server.deliver(resource.jid, wrap(event.stanza, "sent", sender.bare, resource.jid))

    async def on_received(event: StanzaEvent) -> None:
        """§7: a copy to each carbons-enabled resource of the recipient that does not get the message."""
        assert event.to is not None
        message = event.stanza
        private = message.find(_PRIVATE)
        if private is not None:
            message.remove(private)  # §9: "the receiving server SHOULD remove the <private/> element"
            return
        user = event.to.bare
        copies = [resource for resource in server.sessions.resources(user) if enabled(resource)]
        if not copies or not eligible(event, outbound=False):
            return
        skip = {resource.jid for resource in receivers(server, event)}
        for resource in copies:
            # Neither the resources that get the original (§7) nor, for a note to self, the sender (§8).
            if resource.jid not in skip and resource.jid != event.from_:
                server.deliver(resource.jid, wrap(message, "received", user, resource.jid))

    for name in ("enable", "disable"):
        module.hook(f"iq-set/self/{CARBONS}:{name}", on_toggle)
        module.hook(f"iq-set/host/{CARBONS}:{name}", on_toggle)
    module.hook("pre-message/bare", on_sent, priority=SENT_PRIORITY)
    module.hook("pre-message/full", on_sent, priority=SENT_PRIORITY)
    module.hook("message/bare", on_received, priority=RECEIVED_PRIORITY)
    module.hook("message/full", on_received, priority=RECEIVED_PRIORITY)
