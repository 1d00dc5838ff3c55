"""Service Discovery (XEP-0030) of the server and its accounts, and the server's caps (XEP-0115).

Other modules describe their own nodes by hooking events this module fires:
`disco-info/host/<node>` and `disco-items/host/<node>` (claim it by returning True, else the node is
item-not-found), `disco-items/host` for the server's items, and `disco-info/account` /
`disco-items/account` for what an account shows to those allowed to see it (append, don't claim;
its nodes are `disco-info/account/<node>` and `disco-items/account/<node>`, claimed like the host's).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from lxml import etree

from nitro.core.disco import Identity
from nitro.core.module import Module, StreamFeaturesEvent
from nitro.core.router import StanzaEvent
from nitro.xmpp import ns
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.jid import JID
from nitro.xmpp.stanza import child, element, iq_result

# XEP-0115 §4: the node names the software; the version string ties it to one feature set.
CAPS_NODE = "https://nitro.im"
SERVER_IDENTITY = Identity("server", "im", "Nitro")
ACCOUNT_IDENTITY = Identity("account", "registered")

# RFC 6121 §3.1: a contact with subscription 'from' or 'both' may see the account's presence.
_TRUSTED_SUBSCRIPTIONS = frozenset({"from", "both"})


@dataclass(slots=True)
class DiscoEvent:
    """Payload of the `disco-*` events: the request, the node asked for, and the answer being built."""

    request: StanzaEvent
    node: str | None
    query: etree._Element  # the <query/> of the result; handlers append to it

    @property
    def requester(self) -> JID:
        return self.request.from_

    def add_identity(self, category: str, type_: str, name: str | None = None) -> None:
        identity = child(self.query, ns.DISCO_INFO, "identity", category=category, type=type_)
        if name is not None:
            identity.set("name", name)

    def add_feature(self, var: str) -> None:
        child(self.query, ns.DISCO_INFO, "feature", var=var)

    def add_item(self, jid: str, node: str | None = None, name: str | None = None) -> None:
        item = child(self.query, ns.DISCO_ITEMS, "item", jid=jid)
        if node is not None:
            item.set("node", node)
        if name is not None:
            item.set("name", name)


def caps_ver(identities: Iterable[Identity], features: Iterable[str]) -> str:
    """The XEP-0115 §5.1 verification string (SHA-1, base64) of an entity without extended forms."""
    return _caps_ver(frozenset(identities), frozenset(features))


@lru_cache(maxsize=16)  # the server's feature set changes only when modules load or unload
def _caps_ver(identities: frozenset[Identity], features: frozenset[str]) -> str:
    # §5.1 steps 2-4: identities sorted by category, type, xml:lang (we have none), then features;
    # each followed by "<". Python sorts str by code point, which is the i;octet order of UTF-8.
    text = "".join(
        f"{identity.category}/{identity.type}//{identity.name or ''}<"
        for identity in sorted(identities, key=lambda i: (i.category, i.type, "", i.name or ""))
    )
    text += "".join(f"{feature}<" for feature in sorted(features))
    return base64.b64encode(hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).digest()).decode(
        "ascii"
    )


def _query(event: StanzaEvent, namespace: str, node: str | None) -> DiscoEvent:
    query = element(namespace, "query")
    if node is not None:
        query.set("node", node)  # XEP-0030 §3.2: the answer mirrors the node it describes
    return DiscoEvent(event, node, query)


def _node_of(event: StanzaEvent, namespace: str) -> str | None:
    payload = event.stanza.find(f"{{{namespace}}}query")
    return payload.get("node") if payload is not None else None


def load(module: Module) -> None:
    server = module.server
    module.add_identity(SERVER_IDENTITY.category, SERVER_IDENTITY.type, SERVER_IDENTITY.name)
    module.add_feature(ns.DISCO_INFO)
    module.add_feature(ns.DISCO_ITEMS)

    def server_ver() -> str:
        return caps_ver(server.disco.identities, server.disco.features)

    async def host_info(event: StanzaEvent) -> bool:
        """XEP-0030 §3.1 for the server itself, also under its caps node (XEP-0115 §6.2)."""
        node = _node_of(event, ns.DISCO_INFO)
        disco = _query(event, ns.DISCO_INFO, node)
        if node is None or node == f"{CAPS_NODE}#{server_ver()}":
            for identity in sorted(server.disco.identities, key=lambda i: (i.category, i.type)):
                disco.add_identity(identity.category, identity.type, identity.name)
            for feature in sorted(server.disco.features):
                disco.add_feature(feature)
        elif not await server.bus.fire(f"disco-info/host/{node}", disco):
            raise StanzaError("item-not-found", "no such node")  # XEP-0030 §7
        await event.reply(iq_result(event.stanza, disco.query))
        return True

    async def host_items(event: StanzaEvent) -> bool:
        """XEP-0030 §4.1: the server's items (none yet; components will add theirs)."""
        node = _node_of(event, ns.DISCO_ITEMS)
        disco = _query(event, ns.DISCO_ITEMS, node)
        if node is None:
            await server.bus.fire("disco-items/host", disco)
        elif not await server.bus.fire(f"disco-items/host/{node}", disco):
            raise StanzaError("item-not-found", "no such node")  # XEP-0030 §7
        await event.reply(iq_result(event.stanza, disco.query))
        return True

    async def may_see_account(event: StanzaEvent) -> JID:
        """The account a bare-JID query is for, if the requester may see it (XEP-0030 §3.1, §8).

        Anyone else gets service-unavailable, the answer for a missing account too (RFC 6121 §8.5.1),
        so the reply does not reveal whether the account exists.
        """
        account = event.to.bare if event.to is not None else event.from_.bare
        requester = event.from_.bare
        if requester == account:
            return account
        if account.local is not None and requester.local is not None:
            item = await server.storage.rosters.get_item(account.local, str(requester))
            if item is not None and item.subscription in _TRUSTED_SUBSCRIPTIONS:
                return account
        raise StanzaError("service-unavailable")

    async def account_info(event: StanzaEvent) -> bool:
        await may_see_account(event)
        node = _node_of(event, ns.DISCO_INFO)
        disco = _query(event, ns.DISCO_INFO, node)
        if node is None:
            disco.add_identity(ACCOUNT_IDENTITY.category, ACCOUNT_IDENTITY.type)
            disco.add_feature(ns.DISCO_INFO)
            await server.bus.fire("disco-info/account", disco)
        elif not await server.bus.fire(f"disco-info/account/{node}", disco):
            raise StanzaError("item-not-found", "no such node")
        await event.reply(iq_result(event.stanza, disco.query))
        return True

    async def account_items(event: StanzaEvent) -> bool:
        await may_see_account(event)
        node = _node_of(event, ns.DISCO_ITEMS)
        disco = _query(event, ns.DISCO_ITEMS, node)
        if node is None:
            await server.bus.fire("disco-items/account", disco)
        elif not await server.bus.fire(f"disco-items/account/{node}", disco):
            raise StanzaError("item-not-found", "no such node")
        await event.reply(iq_result(event.stanza, disco.query))
        return True

    async def stream_features(event: StreamFeaturesEvent) -> None:
        """XEP-0115 §6.3: the server announces its own caps in the stream features after login."""
        if event.stream.authenticated:
            child(event.features, ns.CAPS, "c", hash="sha-1", node=CAPS_NODE, ver=server_ver())

    module.hook(f"iq-get/host/{ns.DISCO_INFO}:query", host_info)
    module.hook(f"iq-get/host/{ns.DISCO_ITEMS}:query", host_items)
    for to_type in ("bare", "self"):
        module.hook(f"iq-get/{to_type}/{ns.DISCO_INFO}:query", account_info)
        module.hook(f"iq-get/{to_type}/{ns.DISCO_ITEMS}:query", account_items)
    module.hook("stream-features", stream_features)
