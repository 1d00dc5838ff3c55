"""Personal Eventing via PubSub (XEP-0163 v1.2): each account's bare JID is a PubSub service (XEP-0060) for
its own nodes. Notifications go to the owner's resources and the contacts the node's access model admits
whose caps (XEP-0115) ask for `<node>+notify`; a resource coming online gets each node's last item.
Here: the IQ use cases and registrations; notifications in pep_notify, interests from caps in pep_interests.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator

from lxml import etree

from nitro.core.locks import UserLocks
from nitro.core.module import Module
from nitro.core.router import StanzaEvent
from nitro.core.sessions import Resource
from nitro.modules.disco import DiscoEvent
from nitro.modules.pep_interests import INTERESTS
from nitro.modules.pep_notify import PepNotifier
from nitro.storage.errors import NoSuchAccount, QuotaExceeded
from nitro.storage.models import PepItem, PepNode
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.jid import JID
from nitro.xmpp.pubsub import (
    EVENT,
    FEATURES,
    NODE_CONFIG,
    OWNER,
    PUBLISH_OPTIONS,
    PUBSUB,
    checked_name,
    delete_event,
    denial,
    elements,
    event_message,
    items_element,
    node_name,
    parse_publish,
    pubsub_error,
    retract_event,
    unsupported,
    with_affiliations,
)
from nitro.xmpp.pubsub_config import NodeOptions, config_form, parse_options, read_form
from nitro.xmpp.stanza import child, element, iq_result

_QUALIFIERS = frozenset({f"{{{PUBSUB}}}publish-options", f"{{{PUBSUB}}}configure"})


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """A missing account as the client sees it (an unavailable store becomes `wait` at the router)."""
    try:
        yield
    except NoSuchAccount as exc:
        raise StanzaError("item-not-found", "no such account") from exc


class PepService:
    """The PEP services of every local account: the XEP-0060 use cases a PEP service supports."""

    def __init__(self, module: Module, notifier: PepNotifier) -> None:
        self.server = module.server
        self.log = module.log
        self.config = module.server.config.pep
        self.store = module.server.storage.pep
        self.locks = UserLocks()
        self.notifier = notifier

    # -- access ---------------------------------------------------------------------------------------

    async def readable_node(self, owner: JID, name: str, reader: JID) -> PepNode:
        assert owner.local is not None
        with storage_errors():
            node = await self.store.get_node(owner.local, name)
            if node is None:
                raise StanzaError("item-not-found", "no such node")  # XEP-0060 §6.5.9
            error = denial(owner, node, reader, await self.notifier.roster_item(owner, reader))
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
        await self.notifier.notify(owner, node, items_element(EVENT, name, [item]))

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
            await self.notifier.notify(owner, node, retract_event(name, [ids[0]]))

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
                    told = await self.notifier.recipients(owner, node)
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


class PepIq:
    """The IQ and disco handlers of PEP: requests dispatched to the service (XEP-0060 §6-§8)."""

    def __init__(self, service: PepService) -> None:
        self.service = service

    @staticmethod
    def owner_of(event: StanzaEvent) -> JID:
        return event.to.bare if event.to is not None else event.from_.bare

    async def on_pubsub(self, event: StanzaEvent) -> bool:
        owner, pubsub = self.owner_of(event), elements(event.stanza)[0]
        # <publish-options/> and <configure/> only qualify the <publish/> or <create/> they go with
        requests = [node for node in elements(pubsub) if node.tag not in _QUALIFIERS]
        if not requests:
            raise StanzaError("bad-request", "a <pubsub/> without a request")
        request, kind = requests[0], etree.QName(requests[0]).localname
        if event.type == "get":
            if kind == "items":
                await self.service.items(event, owner, request)
            elif kind == "affiliations":
                await self.service.affiliations(event, owner)
            else:
                raise unsupported(f"retrieve-{kind}" if kind == "subscriptions" else kind)
        elif kind in ("subscribe", "unsubscribe", "options"):
            raise unsupported("subscribe", "PEP subscriptions come from presence and caps (XEP-0163 §4)")
        elif event.from_.bare != owner:
            raise StanzaError("forbidden", "only the account owner publishes here")  # XEP-0060 §7.1.3.1
        elif kind == "publish":
            await self.service.publish(event, owner, pubsub)
        elif kind == "retract":
            await self.service.retract(event, owner, request)
        elif kind == "create":
            await self.service.create(event, owner, pubsub)
        else:
            raise StanzaError("bad-request", f"unknown pubsub request <{kind}/>")
        return True

    async def on_owner(self, event: StanzaEvent) -> bool:
        owner = self.owner_of(event)
        if event.from_.bare != owner:
            raise StanzaError("forbidden", "only the account owner manages its nodes")  # XEP-0060 §8
        request = elements(elements(event.stanza)[0])
        if len(request) != 1:
            raise StanzaError("bad-request", "one request per <pubsub xmlns='…#owner'/>")
        if event.type == "get":
            await self.service.owner_get(event, owner, request[0])
        else:
            await self.service.owner_set(event, owner, request[0])
        return True

    async def account_info(self, disco: DiscoEvent) -> None:
        disco.add_identity("pubsub", "pep")  # XEP-0163 §6.1
        for feature in FEATURES:
            disco.add_feature(feature)

    async def account_items(self, disco: DiscoEvent) -> None:
        """XEP-0060 §5.2: the nodes the requester may read (disco reaches only those the account shows)."""
        owner, reader = self.owner_of(disco.request), disco.requester
        assert owner.local is not None
        with storage_errors():
            nodes = await self.service.store.list_nodes(owner.local)
            item = await self.service.notifier.roster_item(owner, reader) if nodes else None
        for node in nodes:
            if denial(owner, node, reader, item) is None:
                disco.add_item(str(owner), node.name)


def load(module: Module) -> None:
    notifier = PepNotifier(module)
    handlers = PepIq(PepService(module, notifier))
    for to_type in ("self", "bare"):
        for kind in ("get", "set"):
            module.hook(f"iq-{kind}/{to_type}/{PUBSUB}:pubsub", handlers.on_pubsub)
            module.hook(f"iq-{kind}/{to_type}/{OWNER}:pubsub", handlers.on_owner)
    module.add_slot(INTERESTS)
    module.hook("pre-presence/self", notifier.on_own_presence, priority=10)
    module.hook("pre-presence/bare", notifier.on_directed, priority=10)
    module.hook("pre-presence/full", notifier.on_directed, priority=10)
    module.hook("presence/bare", notifier.on_subscribed, priority=10)
    module.hook("resource-unbind", notifier.on_unbind)
    module.hook("disco-info/account", handlers.account_info)
    module.hook("disco-items/account", handlers.account_items)
