"""Presence (RFC 6121 §3, §4): subscriptions through the table of nitro.xmpp.subscription, broadcast, probes
answered from the session registry, directed presence, and unavailable presence when a session ends. The
copies sent on a user's behalf go out through nitro.modules.presence_copies.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lxml import etree

from nitro.core.module import Module, SessionEvent
from nitro.core.pace import paced
from nitro.core.router import StanzaEvent
from nitro.core.sessions import Resource
from nitro.modules.presence_copies import Copies, addressed
from nitro.modules.roster import change, local_jid, roster_full, roster_lock, storage_error
from nitro.storage.errors import QuotaExceeded, StorageUnavailable
from nitro.storage.models import RosterItem
from nitro.xmpp import ns
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.jid import JID
from nitro.xmpp.stanza import parse_kept, stanza
from nitro.xmpp.subscription import (
    SUBSCRIPTION_TYPES,
    Direction,
    SubscriptionType,
    Transition,
    apply,
    state_of,
    transition,
)
from nitro.xmpp.xmlwrite import self_contained

if TYPE_CHECKING:
    from nitro.core.context import Core, Session

DELIVERY_PRIORITY = -100  # like message delivery: blocking, privacy and the like hook above it
# A subscription request kept for an offline user is stored whole (§3.1.3); one larger than this is refused
# with policy-violation rather than kept in the roster row every login reads.
MAX_STORED_REQUEST_BYTES = 16384
# Stored requests are our own serialization; still, parsing never reaches the network or expands entities.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)

# RFC 6121 §4.7.1: the values of the 'type' attribute; none means available.
_TYPES = frozenset({None, "unavailable", "probe", "error", *SUBSCRIPTION_TYPES})
_SUBSCRIPTIONS: dict[str | None, SubscriptionType] = {kind: kind for kind in SUBSCRIPTION_TYPES}
_PRIORITY = re.compile(r"[+-]?[0-9]+")  # §4.7.2.3: an xs:byte


def parse_priority(presence: etree._Element) -> int:
    """§4.7.2.3: the <priority/> of an available presence, 0 if absent; clamped to -128..127."""
    node = presence.find(f"{{{ns.CLIENT}}}priority")
    if node is None:
        return 0
    text = (node.text or "").strip()
    if not _PRIORITY.fullmatch(text):
        raise StanzaError("bad-request", f"priority {text!r} is not an integer (RFC 6121 §4.7.2.3)")
    return max(-128, min(127, int(text)))


def _check_type(event: StanzaEvent) -> None:
    if event.type not in _TYPES:
        raise StanzaError("bad-request", f"unknown presence type {event.type!r} (RFC 6121 §4.7.1)")


class Presence:
    """The presence logic of one server; the hooks in `load` call into it."""

    def __init__(self, server: Core) -> None:
        self.server = server
        self.copies = Copies(server)

    async def route(self, presence: etree._Element) -> None:
        await self.server.router.route(presence)

    async def roster(self, user: JID) -> tuple[RosterItem, ...]:
        assert user.local is not None
        try:
            return (await self.server.storage.rosters.get(user.local)).items
        except StorageUnavailable as exc:
            raise storage_error(exc) from exc

    def available_resources(self, user: JID) -> list[Resource]:
        return self.copies.available_resources(user)

    # -- broadcast (§4.2, §4.4, §4.5) --------------------------------------------------------------------

    async def available(self, session: Session, presence: etree._Element) -> None:
        """Initial (§4.2.2) or subsequent (§4.4.2) available presence from a client, without 'to'."""
        priority = parse_priority(presence)
        items = await self.roster(session.jid.bare)  # before recording: a storage failure changes nothing
        initial = not session.available
        kept = self_contained(presence)  # kept as bytes, not as a copy of the element (idle memory)
        session.priority = priority
        session.presence_xml = kept
        # Remembered for probe answers (handled, the stanza is changed no more); one inside a larger document
        # (a BOSH body's) is not, which would keep the whole document.
        _element, template = self.copies.remember(
            kept, presence if presence.getparent() is None else parse_kept(kept)
        )
        await self.copies.broadcast(session.jid, presence, items, template)
        await self.server.bus.fire("presence-changed", SessionEvent(session))
        if not initial:
            return
        # §4.2.2 and §4.3.2, answered locally: the contacts the user is subscribed to are probed, the
        # online ones only (an offline contact would not answer), and the user's other resources too.
        await self.probe_contacts(session.jid, items)
        for other in self.available_resources(session.jid.bare):
            if other.jid != session.jid:
                await self.send_current(other, session.jid)
        # §3.1.3: subscription requests that arrived while the user was offline are delivered now, whole.
        for item in items:
            if state_of(item).pending_in:
                session.send(_pending_request(item, session.jid.bare))
        await self.server.bus.fire("initial-presence", SessionEvent(session))

    async def unavailable(self, session: Session, presence: etree._Element) -> None:
        """§4.5.2: to the contacts and own resources if the session was available, and to every entity
        that got directed presence (§4.6.3); then the session is unavailable and the list is cleared.
        """
        was_available = session.available
        session.presence = None
        if was_available:
            await self.server.bus.fire("presence-changed", SessionEvent(session))
        items: tuple[RosterItem, ...] = ()
        if was_available:
            try:
                items = await self.roster(session.jid.bare)
            except StanzaError:
                session.log.warning("roster unavailable: contacts get no unavailable presence")
            await self.broadcast(session, presence, items)
        directed, session.directed_to = session.directed_to, frozenset()
        if not directed:
            return
        told = {JID.parse(item.jid).bare for item in items if state_of(item).from_}
        for target in directed:
            if target.bare not in told:
                await self.route(addressed(presence, target))

    async def broadcast(
        self, session: Session, presence: etree._Element, items: tuple[RosterItem, ...]
    ) -> None:
        """To every contact with a subscription to the user, and to the user's available resources."""
        await self.copies.broadcast(session.jid, presence, items)

    async def send_current(self, resource: Resource, to: JID) -> None:
        """The last presence `resource` broadcast, sent from its full JID to `to`."""
        await self.copies.send_current((resource,), to)

    async def send_unavailable(self, user: JID, to: JID | str) -> None:
        """Unavailable from each available resource of `user` (§3.2.2, §3.3.3: the subscription ended)."""
        for resource in self.available_resources(user):
            await self.route(stanza("presence", type="unavailable", from_=str(resource.jid), to=str(to)))

    # -- subscriptions (§3, Appendix A) --------------------------------------------------------------------

    async def outbound(
        self, user: JID, contact: JID, presence: etree._Element, kind: SubscriptionType
    ) -> None:
        """A subscription presence from the user's client: the user's side (A.2), then the contact's."""
        assert user.local is not None
        presence.set("from", str(user))  # §3.1.2: stamped with the bare JID
        presence.set("to", str(contact))
        step = await self._apply(user.local, contact, Direction.OUTBOUND, kind)
        if step.forward:
            await self.route(presence)
        await self._side_effects(user, contact, step)

    async def inbound(
        self, contact: JID, user: JID, presence: etree._Element, kind: SubscriptionType
    ) -> None:
        """A subscription presence from `contact` for the local `user` (A.3)."""
        assert user.local is not None
        exists = await self.server.storage.accounts.exists(user.local)
        if not exists:
            if kind == "subscribe":  # §3.1.3: no such user; the request is refused on its behalf
                await self.route(stanza("presence", type="unsubscribed", from_=str(user), to=str(contact)))
            return
        request = presence if kind == "subscribe" else None
        step = await self._apply(user.local, contact, Direction.INBOUND, kind, request)
        if step.forward:
            for resource in self.available_resources(user):
                self.server.deliver(resource.jid, presence)
        if step.reply is not None:
            await self.route(stanza("presence", type=step.reply, from_=str(user), to=str(contact)))
        await self._side_effects(user, contact, step)

    async def _apply(
        self,
        username: str,
        contact: JID,
        direction: Direction,
        kind: SubscriptionType,
        request: etree._Element | None = None,
    ) -> Transition:
        jid = str(contact)
        async with roster_lock(self.server, username):
            steps: list[Transition] = []

            def compute(before: RosterItem | None) -> RosterItem | None:
                """In the store's transaction, on the item as committed (another node may have changed it)."""
                step = transition(state_of(before), direction, kind)
                steps[:] = [step]
                return _keep_request(
                    before, apply(before, jid, step, inbound=direction is Direction.INBOUND), request
                )

            try:
                await change(self.server, username, jid, compute)
                step = steps[0]
            except QuotaExceeded as exc:
                if direction is Direction.OUTBOUND:
                    raise roster_full(self.server) from exc
                # The contact's request cannot be kept: the user's roster has no room (RFC 6120 §8.3.3.18).
                raise StanzaError("resource-constraint", "the contact's roster is full", type="wait") from exc
        return step

    async def _side_effects(self, user: JID, contact: JID, step: Transition) -> None:
        if step.gained_from or step.reply == "subscribed":  # §3.1.5: the new subscriber sees us now
            for session in self.available_resources(user):
                await self.send_current(session, contact)
        if step.lost_from:
            await self.send_unavailable(user, contact)

    async def probe(self, prober: JID, user: JID) -> None:
        """§4.3.2: a probe for the local `user`, answered with the presence of each available resource."""
        assert user.local is not None
        item: RosterItem | None = None
        if prober.bare != user:
            item = await self.server.storage.rosters.get_item(user.local, str(prober.bare))
        await self.answer_probe(prober, user, item)

    async def probe_contacts(self, prober: JID, items: Sequence[RosterItem]) -> None:
        """The probes of an initial presence (§4.2.2), answered locally: each online local contact the
        user is subscribed to, with every contact's roster item read in one storage call."""
        contacts: dict[str, JID] = {}
        async for item in paced(items):
            if not state_of(item).to or (contact := local_jid(self.server, item.jid)) is None:
                continue
            if contact.local is not None and self.available_resources(contact):
                contacts[contact.local] = contact
        if not contacts:
            return
        try:
            found = await self.server.storage.rosters.items_for(list(contacts), str(prober.bare))
        except StorageUnavailable as exc:
            raise storage_error(exc) from exc
        for username, contact in contacts.items():
            await self.answer_probe(prober, contact, found.get(username))

    async def answer_probe(self, prober: JID, user: JID, item: RosterItem | None) -> None:
        """`user`'s answer to `prober`, given `prober`'s item in `user`'s roster (§4.3.2)."""
        if prober.bare != user and not state_of(item).from_:
            await self.route(stanza("presence", type="unsubscribed", from_=str(user), to=str(prober.bare)))
            return
        # read now, after any wait: a resource that changed or left meanwhile has told the prober already
        await self.copies.send_current(self.available_resources(user), prober)  # none: no answer (§4.3.2)

    async def track_directed(self, session: Session, target: JID, available: bool) -> None:
        """§4.6.2, §4.6.3: remember who got directed presence, unless they see our broadcasts anyway."""
        if available:
            if target.local is not None and target.bare != session.jid.bare:
                item = await self.server.storage.rosters.get_item(session.jid.local or "", str(target.bare))
                if state_of(item).from_:
                    return
            session.directed_to = session.directed_to | {target}
        else:
            session.directed_to = session.directed_to - {target}


def _keep_request(
    before: RosterItem | None, after: RosterItem | None, request: etree._Element | None
) -> RosterItem | None:
    """§3.1.3: a request that makes the item pending-in is kept whole until answered (the first one: a
    repeated request while pending is not delivered again); an item no longer pending-in keeps none."""
    if after is None:
        return None
    if not state_of(after).pending_in:
        return dataclasses.replace(after, request=None) if after.request is not None else after
    if state_of(before).pending_in or request is None:
        return after
    data = etree.tostring(request, encoding="utf-8")
    if len(data) > MAX_STORED_REQUEST_BYTES:
        raise StanzaError(
            "policy-violation", f"a subscription request is stored up to {MAX_STORED_REQUEST_BYTES} bytes"
        )
    return dataclasses.replace(after, request=data)


def _pending_request(item: RosterItem, user: JID) -> etree._Element:
    """The stored request of a pending-in item, or a plain one for an item stored without it."""
    if item.request is not None:
        try:
            request = etree.fromstring(item.request, _PARSER)
        except etree.XMLSyntaxError:
            pass
        else:
            request.set("to", str(user))
            return request
    return stanza("presence", type="subscribe", from_=item.jid, to=str(user))


def load(module: Module) -> None:
    server = module.server
    presence = Presence(server)

    async def on_self(event: StanzaEvent) -> bool:
        """Presence without 'to' from a client: broadcast (§4.2, §4.4, §4.5)."""
        _check_type(event)
        session = event.origin
        assert session is not None
        if event.type is None:
            await presence.available(session, event.stanza)
        elif event.type == "unavailable":
            await presence.unavailable(session, event.stanza)
        elif event.type in SUBSCRIPTION_TYPES:
            raise StanzaError("bad-request", "a subscription presence needs a 'to' (RFC 6121 §3.1.1)")
        return True  # a probe or an error addressed to nobody is dropped

    async def on_outbound(event: StanzaEvent) -> bool:
        """Presence with 'to' from a client: subscriptions are handled here; the rest goes on to delivery."""
        _check_type(event)
        session, to, kind = event.origin, event.to, event.type
        assert session is not None
        assert to is not None
        if (subscription := _SUBSCRIPTIONS.get(kind)) is not None:
            if to.bare != event.from_.bare:  # one's own presence needs no subscription
                await presence.outbound(event.from_.bare, to.bare, event.stanza, subscription)
            return True
        if kind is None or kind == "unavailable":
            await presence.track_directed(session, to, available=kind is None)
        return False

    async def on_host(event: StanzaEvent) -> bool:
        """Presence to the server itself: checked, then dropped (nothing here keeps presence state)."""
        _check_type(event)
        return True

    async def on_bare(event: StanzaEvent) -> bool:
        """Presence for a local bare JID (§4.2.3, §4.3.2, §3): delivered, processed or answered."""
        to, kind = event.to, event.type
        assert to is not None
        if (subscription := _SUBSCRIPTIONS.get(kind)) is not None:
            await presence.inbound(event.from_.bare, to.bare, event.stanza, subscription)
        elif kind == "probe":
            await presence.probe(event.from_, to.bare)
        elif kind in (None, "unavailable", "error"):
            for resource in presence.available_resources(to):
                server.deliver(resource.jid, event.stanza)  # no available resource: dropped (§8.5.2.2.2)
        return True

    async def on_full(event: StanzaEvent) -> bool:
        """Presence for a full JID (§8.5.3): subscriptions and probes are for the account; the rest goes
        to that resource if it is connected, else it is dropped (§8.5.3.2.2).
        """
        to, kind = event.to, event.type
        assert to is not None
        if kind in SUBSCRIPTION_TYPES or kind == "probe":
            return await on_bare(event)
        server.deliver(to, event.stanza)
        return True

    async def on_unbind(event: SessionEvent) -> None:
        """§4.5.2: a session that ends without unavailable presence (closed, timed out, lost) sends one."""
        session = event.session
        if not session.available and not session.directed_to:
            return
        gone = stanza("presence", type="unavailable", from_=str(session.jid))
        await presence.unavailable(session, gone)

    module.hook("pre-presence/self", on_self)
    module.hook("pre-presence/bare", on_outbound)
    module.hook("pre-presence/full", on_outbound)
    module.hook("presence/bare", on_bare, priority=DELIVERY_PRIORITY)
    module.hook("presence/full", on_full, priority=DELIVERY_PRIORITY)
    module.hook("presence/host", on_host)  # recipient side: presence to another host (a component) goes on
    module.hook("resource-unbind", on_unbind)
