"""Rosters (RFC 6121 §2): get with versioning (§2.6, XEP-0237), set, remove, pushes to interested resources.

Also the helpers the presence module shares: per-user write locks and `save`, which stores and pushes.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import weakref
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from lxml import etree

from nitro.core.events import ROSTER_CHANGED, RosterChange
from nitro.core.locks import UserLocks
from nitro.core.module import Module, StreamFeaturesEvent
from nitro.core.pace import paced
from nitro.core.router import StanzaEvent
from nitro.core.sessions import INTERESTED
from nitro.modules.roster_result import roster_query
from nitro.storage.errors import QuotaExceeded, StorageUnavailable
from nitro.storage.models import RosterItem
from nitro.xmpp import ns
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.stanza import child, element, iq_result, stanza
from nitro.xmpp.subscription import state_of

if TYPE_CHECKING:
    from nitro.core.context import Core

# §2.3.3: "a local limit" on the length of <name/> and <group/>; the same as a JID part (RFC 7622 §3.2).
MAX_NAME_BYTES = 1023
MAX_GROUP_BYTES = 1023
_ROSTER_SUBSCRIPTIONS = frozenset({"none", "to", "from", "both"})  # §2.1.2.5: ignored in a roster set
_ITEM = f"{{{ns.ROSTER}}}item"
_GROUP = f"{{{ns.ROSTER}}}group"


_locks: weakref.WeakKeyDictionary[Core, UserLocks] = weakref.WeakKeyDictionary()


def roster_lock(server: Core, username: str) -> AbstractAsyncContextManager[None]:
    """Hold while reading-changing-writing `username`'s roster, and while pushing the change.

    Never route a stanza while holding it: the contact's side may answer and need this user's lock.
    """
    return _locks.setdefault(server, UserLocks()).hold(username)


def storage_error(exc: StorageUnavailable) -> StanzaError:
    """RFC 6120 §8.3.3.6 with type 'wait': nothing was written, the client may retry."""
    return StanzaError("internal-server-error", f"roster storage is unavailable: {exc}", type="wait")


def roster_full(server: Core) -> StanzaError:
    """`[roster].max_items` reached by the user's own request: a local policy (RFC 6120 §8.3.3.12)."""
    limit = server.config.roster.max_items
    return StanzaError("policy-violation", f"a roster holds at most {limit} items; remove some first")


def is_local(server: Core, jid: str) -> bool:
    """Whether `jid` is on our domain: until s2s exists, presence for other domains is not sent."""
    return local_jid(server, jid) is not None


def local_jid(server: Core, jid: str) -> JID | None:
    """`jid` parsed if it is on our domain (see `is_local`), else None."""
    try:
        parsed = JID.parse(jid)
    except InvalidJID:
        return None
    return parsed if parsed.domain == server.domain else None


def item_element(item: RosterItem | None, jid: str, query: etree._Element | None = None) -> etree._Element:
    """`<item/>` as in a roster result or push (§2.1.2); None gives subscription='remove' (§2.5.2).

    With `query` (a roster `<query/>`), the item is built in it: a login's roster result is built and
    written in less than half the time of items built alone and moved in (each then keeps its own
    namespace declaration until it is written).
    """
    node = element(ns.ROSTER, "item", jid=jid) if query is None else etree.SubElement(query, _ITEM, jid=jid)
    if item is None:
        node.set("subscription", "remove")
        return node
    if item.name:
        node.set("name", item.name)
    node.set("subscription", item.subscription)
    state = state_of(item)
    if state.pending_out:
        node.set("ask", "subscribe")
    if state.approved:
        node.set("approved", "true")  # §3.4.1
    for group in item.groups:
        etree.SubElement(node, _GROUP).text = group
    return node


def _visible(item: RosterItem | None) -> tuple[object, ...] | None:
    """What a client sees of an item: a change to anything else (pending-in) is not pushed."""
    if item is None or not item.in_roster:
        return None
    state = state_of(item)
    return (item.name, item.subscription, state.pending_out, state.approved, item.groups)


def push(server: Core, username: str, jid: str, item: RosterItem | None, version: int) -> None:
    """Roster push (§2.1.6) to every interested resource of the user, with the new version (§2.6.3)."""
    if server.bus.has(ROSTER_CHANGED):  # observers (plugin hooks) hear of every change, pushed or not
        change = RosterChange(username, jid, "remove" if item is None else item.subscription)
        server.spawn(server.bus.notify(ROSTER_CHANGED, change))
    for resource in server.sessions.resources(JID.make(username, server.domain)):
        if not resource.has(INTERESTED):
            continue
        iq = stanza("iq", type="set", id=f"push-{secrets.token_hex(6)}", to=str(resource.jid))
        query = child(iq, ns.ROSTER, "query", ver=str(version))
        query.append(item_element(item, jid))
        server.deliver(resource.jid, iq)


async def save(server: Core, username: str, before: RosterItem | None, after: RosterItem | None) -> None:
    """Write `after` in place of `before` (None: no item) and push what the client can see of the change.

    Call with the user's roster lock held; raises StorageUnavailable, or QuotaExceeded for a new item past
    `[roster].max_items`, before anything is pushed.
    """
    if before == after:
        return
    rosters = server.storage.rosters
    if after is None:
        assert before is not None
        version = await rosters.remove(username, before.jid)
        if version is None:
            return
    else:
        version = await rosters.put(username, after, max_items=server.config.roster.max_items or None)
    if _visible(before) != _visible(after):
        jid = after.jid if after is not None else before.jid  # type: ignore[union-attr]
        push(server, username, jid, after, version)


async def change(
    server: Core, username: str, jid: str, compute: Callable[[RosterItem | None], RosterItem | None]
) -> tuple[RosterItem | None, RosterItem | None]:
    """Read-change-write one item in the store's transaction (its row lock serialises nodes of a cluster),
    then push what the client can see of the change; returns (before, after). Call with the roster lock held.
    """
    max_items = server.config.roster.max_items or None
    before, after, version = await server.storage.rosters.update(username, jid, compute, max_items=max_items)
    if version is not None and _visible(before) != _visible(after):
        push(server, username, jid, after, version)
    return before, after


def _parse_item(query: etree._Element) -> tuple[str, bool, str | None, tuple[str, ...]]:
    """A roster set's one item (§2.3.3): jid, remove?, name and groups, or the StanzaError to answer."""
    items = query.findall(_ITEM)
    if len(items) != 1:
        raise StanzaError("bad-request", "a roster set carries exactly one item (RFC 6121 §2.3.3)")
    item = items[0]
    text = item.get("jid")
    if text is None:
        raise StanzaError("bad-request", "the item has no 'jid'")
    try:
        jid = str(JID.parse(text))
    except InvalidJID as exc:
        raise StanzaError("jid-malformed", f"item jid: {exc}") from exc
    subscription = item.get("subscription")
    if subscription is not None and subscription != "remove" and subscription not in _ROSTER_SUBSCRIPTIONS:
        raise StanzaError("bad-request", f"subscription {subscription!r} is not allowed in a roster set")
    name = item.get("name") or None
    if name is not None and len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise StanzaError("not-acceptable", f"the name is longer than {MAX_NAME_BYTES} bytes")
    groups: list[str] = []
    for group in item.findall(_GROUP):
        value = group.text or ""
        if not value:
            raise StanzaError("not-acceptable", "a group name is empty")
        if len(value.encode("utf-8")) > MAX_GROUP_BYTES:
            raise StanzaError("not-acceptable", f"a group name is longer than {MAX_GROUP_BYTES} bytes")
        if value in groups:
            raise StanzaError("bad-request", f"group {value!r} is named twice")
        groups.append(value)
    return jid, subscription == "remove", name, tuple(groups)


_VERSION = re.compile(r"[0-9]{1,19}")


def load(module: Module) -> None:
    server = module.server

    async def on_features(event: StreamFeaturesEvent) -> None:
        if event.stream.authenticated:
            event.features.append(element(ns.ROSTER_VER, "ver"))  # XEP-0237 §2, RFC 6121 §2.6.1
            event.features.append(element(ns.PRE_APPROVAL, "sub"))  # RFC 6121 §3.4.1

    async def on_get(event: StanzaEvent) -> bool:
        """§2.1.3 roster get; §2.6.3: an unchanged version is answered with an empty result."""
        username, session = event.from_.local, event.origin
        if username is None or session is None:
            return False
        ver = event.stanza[0].get("ver")
        async with roster_lock(server, username):  # no push can slip between this read and the answer
            roster = await server.storage.rosters.get(username)
            if ver is not None and _VERSION.fullmatch(ver) and int(ver) == roster.version:
                await event.reply(iq_result(event.stanza))
            else:
                try:
                    query = await roster_query(roster.version, roster.items)
                except etree.XMLSyntaxError:  # text XML does not allow, stored around the protocol
                    query = element(ns.ROSTER, "query", ver=str(roster.version))
                    async for item in paced(roster.items):  # thousands of items: others get turns meanwhile
                        if item.in_roster:
                            item_element(item, item.jid, query)
                await event.reply(iq_result(event.stanza, query))
            session.interested = True
        return True

    async def on_set(event: StanzaEvent) -> bool:
        """§2.3 add or update, §2.5 remove; answered only once storage has the change."""
        username = event.from_.local
        if username is None or event.origin is None:
            return False
        jid, remove, name, groups = _parse_item(event.stanza[0])
        if remove:
            await remove_item(event, username, jid)
            return True
        async with roster_lock(server, username):
            try:
                await change(
                    server,
                    username,
                    jid,
                    lambda before: dataclasses.replace(
                        before or RosterItem(jid), name=name, groups=groups, in_roster=True
                    ),
                )
            except QuotaExceeded as exc:
                raise roster_full(server) from exc
        await event.reply(iq_result(event.stanza))
        return True

    async def remove_item(event: StanzaEvent, username: str, jid: str) -> None:
        async with roster_lock(server, username):
            before = await server.storage.rosters.get_item(username, jid)
            if before is None:
                raise StanzaError("item-not-found", f"{jid} is not in the roster (RFC 6121 §2.5.3)")
            await save(server, username, before, None)
        await event.reply(iq_result(event.stanza))
        if not is_local(server, jid):
            return
        # §2.5.2: end both directions of the subscription and cancel pending requests with the contact.
        user, state = event.from_.bare, state_of(before)
        if state.to or state.pending_out:
            await server.router.route(stanza("presence", type="unsubscribe", from_=str(user), to=jid))
        if state.from_ or state.pending_in:
            await server.router.route(stanza("presence", type="unsubscribed", from_=str(user), to=jid))
        if state.from_:  # §3.2.2: the contact no longer gets our presence
            for resource in server.sessions.resources(user):
                if resource.available:
                    gone = stanza("presence", type="unavailable", from_=str(resource.jid), to=jid)
                    await server.router.route(gone)

    async def forbidden(event: StanzaEvent) -> bool:
        """§2.1.5, §2.3.3: nobody reads or writes another user's roster, nor pushes to their client."""
        if event.origin is None:
            return False
        raise StanzaError("forbidden", "this is not your roster")

    module.hook("stream-features", on_features)
    module.hook(f"iq-get/self/{ns.ROSTER}:query", on_get)
    module.hook(f"iq-set/self/{ns.ROSTER}:query", on_set)
    module.hook(f"iq-get/bare/{ns.ROSTER}:query", forbidden)
    module.hook(f"iq-set/bare/{ns.ROSTER}:query", forbidden)
    module.hook(f"iq-set/full/{ns.ROSTER}:query", forbidden)
