"""The copies of a user's presence the server sends on the user's behalf (RFC 6121 §4.2.2, §4.3.2, §4.4.2,
§4.5.2): broadcasts to contacts and own resources, and probe answers. They go straight to the recipients'
resources once the `presence-recipients` hooks (blocking, XEP-0191 §3.3) have vetoed theirs; with stanza
filters (plugins) registered each copy is routed instead, so the filters see every one. A presence is
serialised once per send; each copy's bytes are that with its 'to' patched in (xmlwrite.Addressable). A
session keeps its last presence as bytes (idle memory), which a probe answer patches in the same way; the
elements of the last presences parsed back (or just broadcast) are remembered, a bounded few.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from lxml import etree

from nitro.core.events import PRESENCE_RECIPIENTS, STANZA_FILTER, PresenceRecipients
from nitro.core.pace import paced
from nitro.core.sessions import Resource
from nitro.modules.roster import local_jid
from nitro.storage.models import RosterItem
from nitro.xmpp.jid import JID
from nitro.xmpp.stanza import parse_kept
from nitro.xmpp.subscription import state_of
from nitro.xmpp.xmlwrite import Addressable, in_stream, written_as

if TYPE_CHECKING:
    from nitro.core.context import Core

log = logging.getLogger(__name__)

# How many kept presences' elements are remembered for probe answers: a login storm answers each online
# contact's presence many times, and parsing it costs about three times a copy. Bounded, since an element is
# some 1.2 to 3 KB where the session's bytes are a tenth of that.
ELEMENTS_REMEMBERED = 256


# lxml's copy of an element and its subtree (what copy.copy dispatches to, as deepcopy does without its
# memo), called directly: the dispatch is ~0.4 us of a copy's ~1.5. lxml-stubs do not declare it.
_copied: Callable[[etree._Element], etree._Element] = etree._Element.__copy__  # type: ignore[attr-defined]


def addressed(presence: etree._Element, to: JID | str) -> etree._Element:
    sent = _copied(presence)
    sent.set("to", str(to))
    return sent


class Copies:
    """Sends presence copies for one server: each recipient a local bare JID (delivered to its available
    resources, §8.5.2.1.1) or a full JID (delivered to that resource if it is bound, §8.5.3.1)."""

    def __init__(self, server: Core) -> None:
        self.server = server
        # kept bytes → their element and what a copy of it writes; oldest first
        self._elements: dict[bytes, tuple[etree._Element, Addressable]] = {}

    def remember(self, kept: bytes, presence: etree._Element) -> tuple[etree._Element, Addressable]:
        """`presence` is the element of the `self_contained` bytes `kept`; nobody may change it now."""
        elements = self._elements
        if len(elements) >= ELEMENTS_REMEMBERED:
            del elements[next(iter(elements))]
        pair = elements[kept] = (presence, Addressable(in_stream(kept)))
        return pair

    def element_of(self, kept: bytes) -> tuple[etree._Element, Addressable]:
        """The element of a kept presence (not to be mutated) and what a copy of it writes: remembered, or
        parsed and remembered."""
        pair = self._elements.get(kept)
        return self.remember(kept, parse_kept(kept)) if pair is None else pair

    def available_resources(self, user: JID) -> list[Resource]:
        return [resource for resource in self.server.sessions.resources(user) if resource.available]

    def available_jids(self, user: JID) -> list[JID]:
        return [resource.jid for resource in self.server.sessions.resources(user) if resource.available]

    def reachable(self, contact: JID) -> bool:
        """Whether presence for `contact` would be delivered: to an available resource of an account
        (RFC 6121 §8.5.2.1.1), or to a full JID that is bound, available or not (§8.5.3.1)."""
        if contact.resource is not None:
            return self.server.sessions.resource(contact) is not None
        return self.server.sessions.available(contact)

    def routed(self) -> bool:
        """Whether copies go through the router: stanza filters (plugins) see every stanza it routes."""
        return self.server.bus.has_filters(STANZA_FILTER)

    async def broadcast(
        self,
        user: JID,
        presence: etree._Element,
        items: tuple[RosterItem, ...],
        template: Addressable | None = None,
    ) -> None:
        """From the full JID `user` to every local contact with a subscription to the user, and to the
        user's available resources. `template`: what the presence writes, if made already.

        A copy for a contact without an available resource would be dropped on delivery (§8.5.2.2.2, and
        §4.2.2 lets the server skip it): it is not made at all, unless stanza filters are registered, which
        see every stanza the router would have routed.
        """
        every = self.routed()
        contacts: list[JID] = []
        async for item in paced(items):  # a roster of thousands: other sessions get turns meanwhile
            if not state_of(item).from_ or (contact := local_jid(self.server, item.jid)) is None:
                continue
            if every or self.reachable(contact):
                contacts.append(contact)
        contacts.extend(own.jid for own in self.available_resources(user.bare))
        await self.send(user, presence, contacts, template)

    async def send(
        self,
        sender: JID,
        presence: etree._Element,
        recipients: Sequence[JID],
        template: Addressable | None = None,
    ) -> None:
        """`presence` (its 'from' is `sender`, it has no 'to') to each local recipient, each copy addressed
        to it; `presence` itself is not changed. `template`: what `presence` writes, if made already."""
        domain = self.server.domain
        every = self.routed()
        local: list[JID] = []
        for recipient in recipients:
            if every or recipient.domain != domain:  # another host (a component) is the router's to reach
                await self.server.router.route(addressed(presence, recipient))
            else:
                local.append(recipient)
        if not local:
            return
        event = PresenceRecipients(presence, sender, local)
        try:
            await self.server.bus.fire(PRESENCE_RECIPIENTS, event)
        except Exception:  # as the router does for a failing handler: logged, and nothing is delivered
            log.exception("a presence-recipients hook failed: no copy of %s's presence sent", sender)
            return
        deliver = self.server.deliver
        # The presence serialised once, each copy's bytes patched from it; one copy of a presence not
        # serialised yet is serialised when written.
        if presence.get("to") is not None:
            template = None
        elif template is None and len(event.recipients) > 1:
            template = Addressable.of(presence)
        for recipient in event.recipients:
            if recipient.resource is not None:
                resources = [recipient]
            else:
                resources = self.available_jids(recipient)
                if not resources:
                    continue  # dropped (§8.5.2.2.2)
            if template is None:
                sent = addressed(presence, recipient)
                for resource in resources:
                    deliver(resource, sent)
                continue
            to = str(recipient)
            sent = addressed(presence, to)
            written_as.set(sent, template.to(to))
            try:
                for resource in resources:
                    deliver(resource, sent)
            finally:
                written_as.clear()

    async def send_current(self, resources: Sequence[Resource], to: JID) -> None:
        """The last presence each of `resources` broadcast, sent from its full JID to `to`."""
        for resource in resources:
            kept = resource.presence_xml
            if kept is not None:
                element, template = self.element_of(kept)
                await self.send(resource.jid, element, (to,), template)
