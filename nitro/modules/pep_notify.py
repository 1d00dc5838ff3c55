"""PEP notifications (XEP-0163 §4.3): who hears about a node, the event messages, the last items sent
on presence, and the presence hooks that keep each session's interests and directed presence current.
"""

from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING

from lxml import etree

from nitro.core.module import Module, SessionEvent
from nitro.core.router import StanzaEvent
from nitro.core.sessions import Resource
from nitro.modules.pep_interests import INTERESTS, NOTIFY_FLAG, CapsInterests, interests, set_nodes, wants
from nitro.modules.presence import parse_priority
from nitro.storage.errors import StorageUnavailable
from nitro.storage.models import PepNode, RosterItem
from nitro.xmpp import ns
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.pubsub import EVENT, SHARES_PRESENCE, denial, event_message, items_element
from nitro.xmpp.stanza import add_delay

if TYPE_CHECKING:
    from nitro.core.context import Session

_KNOWN = frozenset({"to", "from", "both"})  # presence flows one way or the other
_CAPS = f"{{{ns.CAPS}}}c"


def _caps_priority(presence: etree._Element) -> tuple[etree._Element | None, bool]:
    """The presence's caps, and whether its priority lets it receive notifications (XEP-0163 §4.3.2)."""
    try:
        eligible = parse_priority(presence) >= 0
    except StanzaError:
        eligible = False  # the presence module answers the bad priority
    return presence.find(_CAPS), eligible


class PepNotifier:
    """Sends PEP events to the sessions that want them, and tracks what each online session wants."""

    def __init__(self, module: Module) -> None:
        self.server = module.server
        self.log = module.log
        self.store = module.server.storage.pep
        self.caps = CapsInterests(module.server)
        self.directed: dict[JID, set[JID]] = {}  # owner → full JIDs that sent it directed presence

    async def roster_item(self, owner: JID, reader: JID) -> RosterItem | None:
        if reader.bare == owner or owner.local is None:
            return None
        return await self.server.storage.rosters.get_item(owner.local, str(reader.bare))

    # -- notifications (XEP-0163 §4.3) ----------------------------------------------------------------

    def resources_of(self, jid: str) -> list[Resource]:
        try:
            return self.server.sessions.resources(JID.parse(jid))
        except InvalidJID:
            return []

    async def recipients(self, owner: JID, node: PepNode) -> list[Resource]:
        """XEP-0163 §4: the owner's resources and the readers the access model admits, each available
        with a non-negative priority (§4.3.2) and interested in the node (§4.2)."""
        assert owner.local is not None
        candidates = self.server.sessions.resources(owner)
        if node.access_model in ("presence", "open"):
            try:
                roster = await self.server.storage.rosters.get(owner.local)
            except StorageUnavailable:
                self.log.warning("roster of %s unavailable: only its own resources are notified", owner)
                roster = None
            wanted = SHARES_PRESENCE if node.access_model == "presence" else _KNOWN
            for item in roster.items if roster is not None else ():
                if item.subscription in wanted:
                    candidates += self.resources_of(item.jid)
            if node.access_model == "open":  # and those who sent the owner directed presence
                candidates += [
                    r for full in self.directed.get(owner, ()) if (r := self.server.sessions.resource(full))
                ]
        elif node.access_model == "whitelist":
            for jid in node.whitelist:
                candidates += self.resources_of(jid)
        unique = {resource.jid: resource for resource in candidates}
        return [
            resource
            for resource in unique.values()
            if resource.available and resource.priority >= 0 and wants(resource, node.name)
        ]

    async def notify(self, owner: JID, node: PepNode, content: etree._Element) -> None:
        for resource in await self.recipients(owner, node):
            await self.server.router.route(
                event_message(str(owner), str(resource.jid), copy.deepcopy(content))
            )

    async def send_last(self, owner: JID, to: JID, wanted: frozenset[str]) -> None:
        """XEP-0163 §4.3.3 and §4.3.4: the last item of each node the resource `to` wants and may read."""
        if not wanted or owner.local is None or self.server.sessions.resource(to) is None:
            return
        try:
            nodes = [node for node in await self.store.list_nodes(owner.local) if node.name in wanted]
            item = await self.roster_item(owner, to) if nodes else None
            for node in nodes:
                if denial(owner, node, to, item) is not None:
                    continue
                last = await self.store.items(owner.local, node.name, max_items=1)
                if last and self.server.sessions.resource(to) is not None:
                    message = event_message(str(owner), str(to), items_element(EVENT, node.name, last))
                    add_delay(message, last[0].published_at, str(owner))
                    await self.server.router.route(message)
        except StorageUnavailable as exc:
            self.log.warning("last published items of %s not sent to %s: %s", owner, to, exc)

    # -- interests from caps (XEP-0115, XEP-0163 §4.2) ------------------------------------------------

    async def refresh(
        self, session: Session, caps: etree._Element | None, *, initial: bool, owner: JID | None = None
    ) -> None:
        """A presence from `session` (broadcast, or directed to `owner`): learn its interests from its
        caps, then send the last items it has not seen: all on initial presence, else the new ones."""
        state = interests(session)
        before = state.nodes
        ver = caps.get("ver") if caps is not None else None
        if caps is not None and ver and ver != state.ver:
            state.ver = ver
            found = await self.caps.resolve(session, caps)
            if state.ver == ver:  # not superseded by a later presence meanwhile
                set_nodes(session, state, found if found is not None else state.nodes)
                state.ver = ver if found is not None else None
        wanted = state.nodes if initial or owner is not None else state.nodes - before
        if not wanted or session.closed:
            return
        owners = [owner] if owner is not None else await self.watched(session)
        for watched in owners:
            await self.send_last(watched, session.jid, wanted)

    async def watched(self, session: Session) -> list[JID]:
        """The accounts whose nodes `session` may hear about: its own and its contacts'."""
        owners = [session.jid.bare]
        try:
            roster = await self.server.storage.rosters.get(session.username or "")
        except StorageUnavailable:
            return owners
        for item in roster.items:
            if item.subscription in _KNOWN:
                with contextlib.suppress(InvalidJID):
                    contact = JID.parse(item.jid)
                    if contact.domain == self.server.domain and contact.local is not None:
                        owners.append(contact)
        return owners

    def undirect(self, session: Session, owners: set[JID] | None = None) -> None:
        state = interests(session)
        for owner in list(state.directed if owners is None else owners):
            state.directed -= {owner}
            listeners = self.directed.get(owner)
            if listeners is not None:
                listeners.discard(session.jid)
                if not listeners:
                    del self.directed[owner]

    # -- presence hooks -------------------------------------------------------------------------------

    async def on_own_presence(self, event: StanzaEvent) -> None:
        """XEP-0163 §4.3.3: initial presence brings the last items; new caps may bring more interests."""
        session = event.origin
        if session is None:
            return
        if event.type == "unavailable":
            self.undirect(session)  # RFC 6121 §4.6.3: directed presence ends with broadcast unavailable
            return
        if event.type is not None:
            return
        caps, eligible = _caps_priority(event.stanza)
        initial = not session.available
        # not made here: a session without caps and interests keeps none (idle memory); `refresh` makes it
        state = session.slots.peek(INTERESTS)
        ver, nodes = (None, frozenset[str]()) if state is None else (state.ver, state.nodes)
        changed = caps is not None and caps.get("ver") != ver
        if eligible and (changed or (initial and (caps is not None or nodes))):
            self.server.spawn(self.refresh(session, caps, initial=initial))

    async def on_directed(self, event: StanzaEvent) -> None:
        """XEP-0163 §4 (open nodes): a local account that gets our directed presence knows we are there."""
        session, to = event.origin, event.to
        if session is None or to is None or to.local is None or to.bare == event.from_.bare:
            return
        if event.type == "unavailable":
            self.undirect(session, {to.bare})
        elif event.type is None and to.bare not in (state := interests(session)).directed:
            state.directed |= {to.bare}
            self.directed.setdefault(to.bare, set()).add(session.jid)
            caps, eligible = _caps_priority(event.stanza)
            if eligible:
                self.server.spawn(self.refresh(session, caps, initial=False, owner=to.bare))

    async def on_subscribed(self, event: StanzaEvent) -> None:
        """XEP-0060 §6.1.7 (on_sub): a contact that gains a presence subscription gets the last items."""
        owner, contact = event.from_.bare, event.to
        if (
            event.type != "subscribed"
            or contact is None
            or owner.local is None
            or owner.domain != self.server.domain
        ):
            return
        for resource in self.server.sessions.resources(contact.bare):
            nodes = frozenset(f[len(NOTIFY_FLAG) :] for f in resource.flags if f.startswith(NOTIFY_FLAG))
            if resource.available and resource.priority >= 0 and nodes:
                self.server.spawn(self.send_last(owner, resource.jid, nodes))

    async def on_unbind(self, event: SessionEvent) -> None:
        self.undirect(event.session)
