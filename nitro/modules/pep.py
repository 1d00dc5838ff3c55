"""Personal Eventing via PubSub (XEP-0163 v1.2): each account's bare JID is a PubSub service (XEP-0060) for
its own nodes. Notifications go to the owner's resources and the contacts the node's access model admits
whose caps (XEP-0115) ask for `<node>+notify`; a resource coming online gets each node's last item.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import datetime
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lxml import etree

from nitro.core.locks import UserLocks
from nitro.core.module import Module, SessionEvent
from nitro.core.router import StanzaEvent
from nitro.core.sessions import Resource
from nitro.core.slots import Slot
from nitro.modules.disco import DiscoEvent
from nitro.modules.presence import parse_priority
from nitro.storage.errors import NoSuchAccount, QuotaExceeded, StorageUnavailable
from nitro.storage.models import PepItem, PepNode, RosterItem
from nitro.xmpp import ns
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.pubsub import (
    EVENT,
    FEATURES,
    NODE_CONFIG,
    OWNER,
    PUBLISH_OPTIONS,
    PUBSUB,
    SHARES_PRESENCE,
    NodeOptions,
    checked_name,
    config_form,
    delete_event,
    denial,
    elements,
    event_message,
    items_element,
    node_name,
    notify_interests,
    parse_options,
    parse_publish,
    pubsub_error,
    read_form,
    retract_event,
    supported_hash,
    unsupported,
    verification_string,
    with_affiliations,
)
from nitro.xmpp.stanza import add_delay, child, element, iq_result, stanza

if TYPE_CHECKING:
    from nitro.core.context import Session

DISCO_TIMEOUT = 10.0  # seconds a client has to answer the disco#info query behind its caps
CAPS_CACHE_SIZE = 4096  # verified caps verification strings remembered with their +notify interests

_KNOWN = frozenset({"to", "from", "both"})  # presence flows one way or the other
_CAPS = f"{{{ns.CAPS}}}c"
_QUALIFIERS = frozenset({f"{{{PUBSUB}}}publish-options", f"{{{PUBSUB}}}configure"})


@dataclass(slots=True)
class Interests:
    """What one session asked for (its `session.data['pep']`)."""

    nodes: frozenset[str] = frozenset()  # XEP-0163 §4.2: the nodes of its `+notify` features
    ver: str | None = None  # the caps verification string the nodes came from
    directed: set[JID] = field(default_factory=set)  # local accounts it sent directed presence to


NOTIFY_FLAG = "pep+notify:"  # Resource flags "pep+notify:<node>": the resource wants the node's events


def wants(resource: Resource, node: str) -> bool:
    return resource.has(NOTIFY_FLAG + node)


def set_nodes(session: Session, state: Interests, nodes: frozenset[str]) -> None:
    """Record a session's +notify nodes, in its state and as flags of its Resource value."""
    for gone in state.nodes - nodes:
        session.set_flag(NOTIFY_FLAG + gone, False)
    for new in nodes - state.nodes:
        session.set_flag(NOTIFY_FLAG + new)
    state.nodes = nodes


def _dump_interests(state: Interests) -> dict[str, Any]:
    return {
        "nodes": sorted(state.nodes),
        "ver": state.ver,
        "directed": sorted(str(j) for j in state.directed),
    }


def _load_interests(data: dict[str, Any], _session: object) -> Interests:
    ver = data.get("ver")
    return Interests(
        frozenset(str(n) for n in data.get("nodes", ())),
        None if ver is None else str(ver),
        {JID.parse(str(jid)) for jid in data.get("directed", ())},
    )


INTERESTS: Slot[Interests] = Slot("pep", lambda _session: Interests(), _dump_interests, _load_interests)


def interests(session: Session) -> Interests:
    return session.slots.get(INTERESTS)


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """A missing account as the client sees it (an unavailable store becomes `wait` at the router)."""
    try:
        yield
    except NoSuchAccount as exc:
        raise StanzaError("item-not-found", "no such account") from exc


class PepService:
    """The PEP services of every local account, and what each online session wants to hear about."""

    def __init__(self, module: Module) -> None:
        self.server = module.server
        self.log = module.log
        self.config = module.server.config.pep
        self.store = module.server.storage.pep
        self.locks = UserLocks()
        self.caps: collections.OrderedDict[str, frozenset[str]] = collections.OrderedDict()
        self.resolving: dict[str, asyncio.Future[frozenset[str] | None]] = {}
        self.directed: dict[JID, set[JID]] = {}  # owner → full JIDs that sent it directed presence

    # -- access ---------------------------------------------------------------------------------------

    async def roster_item(self, owner: JID, reader: JID) -> RosterItem | None:
        if reader.bare == owner or owner.local is None:
            return None
        return await self.server.storage.rosters.get_item(owner.local, str(reader.bare))

    async def readable_node(self, owner: JID, name: str, reader: JID) -> PepNode:
        assert owner.local is not None
        with storage_errors():
            node = await self.store.get_node(owner.local, name)
            if node is None:
                raise StanzaError("item-not-found", "no such node")  # XEP-0060 §6.5.9
            error = denial(owner, node, reader, await self.roster_item(owner, reader))
        if error is not None:
            raise error
        return node

    # -- publish, retract, items (XEP-0060 §7.1, §7.2, §6.5) -----------------------------------------

    def options(self, parent: etree._Element | None, form_type: str) -> NodeOptions:
        form = read_form(parent)
        if form is None:
            return NodeOptions()
        return parse_options(form, form_type, max_items_cap=self.config.max_items_per_node)

    async def create_node(self, username: str, node: PepNode) -> None:
        """`[pep].max_nodes` is a local policy (XEP-0060 names no condition for it): policy-violation."""
        limit = self.config.max_nodes
        if len(await self.store.list_nodes(username)) >= limit:
            raise StanzaError("policy-violation", f"an account holds at most {limit} PEP nodes")
        await self.store.put_node(username, node)

    async def publish(self, event: StanzaEvent, owner: JID, request: etree._Element) -> None:
        assert owner.local is not None
        publish = request.find(f"{{{PUBSUB}}}publish")
        assert publish is not None
        publication = parse_publish(publish, self.config.max_item_bytes)
        name, item_id = publication.node, publication.item_id
        options = self.options(request.find(f"{{{PUBSUB}}}publish-options"), PUBLISH_OPTIONS)
        item = PepItem(item_id, publication.payload, datetime.datetime.now(datetime.UTC))
        async with self.locks.hold(owner.local):
            with storage_errors():
                node = await self.store.get_node(owner.local, name)
                unmet = options.unmet(node if node is not None else options.apply(PepNode(name)))
                if unmet:  # §7.1.5: the node is (or would be) configured otherwise
                    raise pubsub_error("conflict", "precondition-not-met", f"not met: {', '.join(unmet)}")
                if node is None:  # XEP-0163 §3: auto-create, with the publish-options as configuration
                    node = options.apply(PepNode(name))
                    await self.create_node(owner.local, node)
                if node.persist_items:
                    cap = min(node.max_items, self.config.max_items_per_node)
                    quota = self.config.max_items_per_account or None
                    try:
                        await self.store.publish(
                            owner.local, name, item, max_items=cap, max_account_items=quota
                        )
                    except QuotaExceeded as exc:
                        raise StanzaError(
                            "policy-violation", f"an account holds at most {quota} PEP items; retract some"
                        ) from exc
        result = element(PUBSUB, "pubsub")
        child(child(result, PUBSUB, "publish", node=name), PUBSUB, "item", id=item_id)  # §7.1.2
        await event.reply(iq_result(event.stanza, result))
        await self.notify(owner, node, items_element(EVENT, name, [item]))

    async def retract(self, event: StanzaEvent, owner: JID, retract: etree._Element) -> None:
        assert owner.local is not None
        name = node_name(retract)
        ids = [item.get("id") for item in retract.iterchildren(f"{{{PUBSUB}}}item")]
        if len(ids) != 1 or not ids[0]:  # §7.2.3.4
            raise pubsub_error("bad-request", "item-required", "retract exactly one <item id='…'/>")
        async with self.locks.hold(owner.local):
            with storage_errors():
                node = await self.store.get_node(owner.local, name)
                if node is None or not await self.store.retract(owner.local, name, ids[0]):
                    raise StanzaError("item-not-found", "no such item")  # §7.2.3
        await event.reply(iq_result(event.stanza))
        # §7.2.2.1: notify="true" asks for them; pubsub#notify_retract (fixed to 1) sends them anyway
        if retract.get("notify") not in ("0", "false"):
            await self.notify(owner, node, retract_event(name, [ids[0]]))

    async def items(self, event: StanzaEvent, owner: JID, request: etree._Element) -> None:
        assert owner.local is not None
        name = node_name(request)
        limit = request.get("max_items")
        if limit is not None and (not limit.isdigit() or int(limit) < 1):
            raise StanzaError("bad-request", "max_items is a positive integer")  # §6.5.7
        ids = [item.get("id") or "" for item in request.iterchildren(f"{{{PUBSUB}}}item")]
        if not all(ids):
            raise StanzaError("bad-request", "an <item/> asked for needs an id")  # §6.5.8
        await self.readable_node(owner, name, event.from_)
        with storage_errors():
            found = await self.store.items(
                owner.local, name, max_items=int(limit) if limit else None, item_ids=ids or None
            )
        result = element(PUBSUB, "pubsub")
        result.append(items_element(PUBSUB, name, found))  # newest first
        await event.reply(iq_result(event.stanza, result))

    async def create(self, event: StanzaEvent, owner: JID, request: etree._Element) -> None:
        """XEP-0060 §8.1.2 and §8.1.3 (create-and-configure); no instant nodes (§8.1.3: nodeid-required)."""
        assert owner.local is not None
        create = request.find(f"{{{PUBSUB}}}create")
        assert create is not None
        missing = pubsub_error("not-acceptable", "nodeid-required", "instant nodes are not supported")
        name = checked_name(create.get("node"), "node name", missing)
        options = self.options(request.find(f"{{{PUBSUB}}}configure"), NODE_CONFIG)
        if options.unsupported:
            raise StanzaError("not-acceptable", f"not supported: {', '.join(options.unsupported)}")
        async with self.locks.hold(owner.local):
            with storage_errors():
                if await self.store.get_node(owner.local, name) is not None:
                    raise StanzaError("conflict", "the node exists")
                await self.create_node(owner.local, options.apply(PepNode(name)))
        await event.reply(iq_result(event.stanza))

    async def affiliations(self, event: StanzaEvent, owner: JID) -> None:
        """XEP-0060 §5.7: the requester's affiliations with this service's nodes."""
        assert owner.local is not None
        reader = str(event.from_.bare)
        with storage_errors():
            nodes = await self.store.list_nodes(owner.local)
        result = element(PUBSUB, "pubsub")
        listing = child(result, PUBSUB, "affiliations")
        for node in nodes:
            if event.from_.bare == owner:
                child(listing, PUBSUB, "affiliation", node=node.name, affiliation="owner")
            elif reader in node.whitelist:
                child(listing, PUBSUB, "affiliation", node=node.name, affiliation="member")
        await event.reply(iq_result(event.stanza, result))

    # -- owner use cases (XEP-0060 §8) ----------------------------------------------------------------

    async def owner_get(self, event: StanzaEvent, owner: JID, request: etree._Element) -> None:
        assert owner.local is not None
        result = element(OWNER, "pubsub")
        if request.tag == f"{{{OWNER}}}default":  # §8.3
            child(result, OWNER, "default").append(config_form(PepNode("")).to_element())
        else:
            name = node_name(request)
            with storage_errors():
                node = await self.store.get_node(owner.local, name)
            if node is None:
                raise StanzaError("item-not-found", "no such node")
            if request.tag == f"{{{OWNER}}}configure":  # §8.2.1
                child(result, OWNER, "configure", node=name).append(config_form(node).to_element())
            elif request.tag == f"{{{OWNER}}}affiliations":  # §8.9.1
                listing = child(result, OWNER, "affiliations", node=name)
                child(listing, OWNER, "affiliation", jid=str(owner), affiliation="owner")
                for jid in node.whitelist:
                    child(listing, OWNER, "affiliation", jid=jid, affiliation="member")
            else:
                raise unsupported(etree.QName(request).localname)
        await event.reply(iq_result(event.stanza, result))

    async def owner_set(self, event: StanzaEvent, owner: JID, request: etree._Element) -> None:
        assert owner.local is not None
        kind = etree.QName(request).localname
        if kind not in ("configure", "delete", "affiliations"):
            raise unsupported(f"{kind}-nodes" if kind == "purge" else kind)
        name = node_name(request)
        form = read_form(request) if kind == "configure" else None
        if kind == "configure" and form is None:
            raise StanzaError("bad-request", "configure needs a data form")  # §8.2.4
        told: list[Resource] = []
        async with self.locks.hold(owner.local):
            with storage_errors():
                node = await self.store.get_node(owner.local, name)
                if node is None:
                    raise StanzaError("item-not-found", "no such node")  # §8.2.3.4, §8.4.3.2, §8.9.2.4
                if kind == "delete":  # §8.4: subscribers are told, from the configuration before deletion
                    told = await self.recipients(owner, node)
                    await self.store.delete_node(owner.local, name)
                elif kind == "configure" and form is not None and form.type != "cancel":  # §8.2.5
                    options = parse_options(form, NODE_CONFIG, max_items_cap=self.config.max_items_per_node)
                    if options.unsupported:
                        raise StanzaError(
                            "not-acceptable", f"not supported: {', '.join(options.unsupported)}"
                        )
                    await self.store.put_node(owner.local, options.apply(node))
                elif kind == "affiliations":
                    await self.store.put_node(owner.local, with_affiliations(node, owner, request))
        await event.reply(iq_result(event.stanza))
        for session in told:
            await self.server.router.route(event_message(str(owner), str(session.jid), delete_event(name)))

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
            found = await self.resolve(session, caps)
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

    async def resolve(self, session: Session, caps: etree._Element) -> frozenset[str] | None:
        """The `+notify` nodes behind caps: cached by verification string once the hash checks out
        (XEP-0115 §5.4), else asked of the session with disco#info (§6.2); None if that fails."""
        ver, hash_name = caps.get("ver") or "", caps.get("hash")
        cacheable = supported_hash(hash_name)
        if cacheable:
            if (known := self.caps.get(ver)) is not None:
                self.caps.move_to_end(ver)
                return known
            if (pending := self.resolving.get(ver)) is not None and (known := await pending) is not None:
                return known
        future: asyncio.Future[frozenset[str] | None] | None = None
        if cacheable and ver not in self.resolving:
            future = self.resolving[ver] = asyncio.get_running_loop().create_future()
        verified: frozenset[str] | None = None
        try:
            query = await self.disco_info(session, f"{caps.get('node') or ''}#{ver}")
            if query is None:
                return None
            found = notify_interests(query)
            if cacheable and verification_string(query, hash_name or "") == ver:
                verified = found
                self.caps[ver] = found
                while len(self.caps) > CAPS_CACHE_SIZE:
                    self.caps.popitem(last=False)
            return found  # unverified answers serve this session only
        finally:
            if future is not None:
                del self.resolving[ver]
                future.set_result(verified)

    async def disco_info(self, session: Session, node: str) -> etree._Element | None:
        iq = stanza("iq", type="get", from_=self.server.domain, to=str(session.jid))
        child(iq, ns.DISCO_INFO, "query", node=node)
        try:
            reply = await self.server.router.send_iq(iq, DISCO_TIMEOUT)
        except TimeoutError:
            session.log.info("no answer to the caps query for %s", node)
            return None
        if reply.get("type") != "result":
            return None
        return reply.find(f"{{{ns.DISCO_INFO}}}query")

    def undirect(self, session: Session, owners: set[JID] | None = None) -> None:
        state = interests(session)
        for owner in list(state.directed if owners is None else owners):
            state.directed.discard(owner)
            listeners = self.directed.get(owner)
            if listeners is not None:
                listeners.discard(session.jid)
                if not listeners:
                    del self.directed[owner]


def _caps_priority(presence: etree._Element) -> tuple[etree._Element | None, bool]:
    """The presence's caps, and whether its priority lets it receive notifications (XEP-0163 §4.3.2)."""
    try:
        eligible = parse_priority(presence) >= 0
    except StanzaError:
        eligible = False  # the presence module answers the bad priority
    return presence.find(_CAPS), eligible


def load(module: Module) -> None:
    server = module.server
    pep = PepService(module)

    def owner_of(event: StanzaEvent) -> JID:
        return event.to.bare if event.to is not None else event.from_.bare

    async def on_pubsub(event: StanzaEvent) -> bool:
        owner, pubsub = owner_of(event), elements(event.stanza)[0]
        # <publish-options/> and <configure/> only qualify the <publish/> or <create/> they go with
        requests = [node for node in elements(pubsub) if node.tag not in _QUALIFIERS]
        if not requests:
            raise StanzaError("bad-request", "a <pubsub/> without a request")
        request, kind = requests[0], etree.QName(requests[0]).localname
        if event.type == "get":
            if kind == "items":
                await pep.items(event, owner, request)
            elif kind == "affiliations":
                await pep.affiliations(event, owner)
            else:
                raise unsupported(f"retrieve-{kind}" if kind == "subscriptions" else kind)
        elif kind in ("subscribe", "unsubscribe", "options"):
            raise unsupported("subscribe", "PEP subscriptions come from presence and caps (XEP-0163 §4)")
        elif event.from_.bare != owner:
            raise StanzaError("forbidden", "only the account owner publishes here")  # XEP-0060 §7.1.3.1
        elif kind == "publish":
            await pep.publish(event, owner, pubsub)
        elif kind == "retract":
            await pep.retract(event, owner, request)
        elif kind == "create":
            await pep.create(event, owner, pubsub)
        else:
            raise StanzaError("bad-request", f"unknown pubsub request <{kind}/>")
        return True

    async def on_owner(event: StanzaEvent) -> bool:
        owner = owner_of(event)
        if event.from_.bare != owner:
            raise StanzaError("forbidden", "only the account owner manages its nodes")  # XEP-0060 §8
        request = elements(elements(event.stanza)[0])
        if len(request) != 1:
            raise StanzaError("bad-request", "one request per <pubsub xmlns='…#owner'/>")
        if event.type == "get":
            await pep.owner_get(event, owner, request[0])
        else:
            await pep.owner_set(event, owner, request[0])
        return True

    async def on_own_presence(event: StanzaEvent) -> None:
        """XEP-0163 §4.3.3: initial presence brings the last items; new caps may bring more interests."""
        session = event.origin
        if session is None:
            return
        if event.type == "unavailable":
            pep.undirect(session)  # RFC 6121 §4.6.3: directed presence ends with broadcast unavailable
            return
        if event.type is not None:
            return
        caps, eligible = _caps_priority(event.stanza)
        initial, state = session.presence is None, interests(session)
        changed = caps is not None and caps.get("ver") != state.ver
        if eligible and (changed or (initial and (caps is not None or state.nodes))):
            server.spawn(pep.refresh(session, caps, initial=initial))

    async def on_directed(event: StanzaEvent) -> None:
        """XEP-0163 §4 (open nodes): a local account that gets our directed presence knows we are there."""
        session, to = event.origin, event.to
        if session is None or to is None or to.local is None or to.bare == event.from_.bare:
            return
        if event.type == "unavailable":
            pep.undirect(session, {to.bare})
        elif event.type is None and to.bare not in interests(session).directed:
            interests(session).directed.add(to.bare)
            pep.directed.setdefault(to.bare, set()).add(session.jid)
            caps, eligible = _caps_priority(event.stanza)
            if eligible:
                server.spawn(pep.refresh(session, caps, initial=False, owner=to.bare))

    async def on_subscribed(event: StanzaEvent) -> None:
        """XEP-0060 §6.1.7 (on_sub): a contact that gains a presence subscription gets the last items."""
        owner, contact = event.from_.bare, event.to
        if (
            event.type != "subscribed"
            or contact is None
            or owner.local is None
            or owner.domain != server.domain
        ):
            return
        for resource in server.sessions.resources(contact.bare):
            nodes = frozenset(f[len(NOTIFY_FLAG) :] for f in resource.flags if f.startswith(NOTIFY_FLAG))
            if resource.available and resource.priority >= 0 and nodes:
                server.spawn(pep.send_last(owner, resource.jid, nodes))

    async def on_unbind(event: SessionEvent) -> None:
        pep.undirect(event.session)

    async def account_info(disco: DiscoEvent) -> None:
        disco.add_identity("pubsub", "pep")  # XEP-0163 §6.1
        for feature in FEATURES:
            disco.add_feature(feature)

    async def account_items(disco: DiscoEvent) -> None:
        """XEP-0060 §5.2: the nodes the requester may read (disco reaches only those the account shows)."""
        owner, reader = owner_of(disco.request), disco.requester
        assert owner.local is not None
        with storage_errors():
            nodes = await pep.store.list_nodes(owner.local)
            item = await pep.roster_item(owner, reader) if nodes else None
        for node in nodes:
            if denial(owner, node, reader, item) is None:
                disco.add_item(str(owner), node.name)

    for to_type in ("self", "bare"):
        for kind in ("get", "set"):
            module.hook(f"iq-{kind}/{to_type}/{PUBSUB}:pubsub", on_pubsub)
            module.hook(f"iq-{kind}/{to_type}/{OWNER}:pubsub", on_owner)
    module.add_slot(INTERESTS)
    module.hook("pre-presence/self", on_own_presence, priority=10)
    module.hook("pre-presence/bare", on_directed, priority=10)
    module.hook("pre-presence/full", on_directed, priority=10)
    module.hook("presence/bare", on_subscribed, priority=10)
    module.hook("resource-unbind", on_unbind)
    module.hook("disco-info/account", account_info)
    module.hook("disco-items/account", account_items)
