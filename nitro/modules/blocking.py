"""Blocking Command (XEP-0191 v1.3): users block JIDs, and nothing passes between them and a blocked JID
(§3.3); each online user's list is cached here so that checking a stanza never waits for SQL.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from lxml import etree

from nitro.core.events import PRESENCE_RECIPIENTS, PresenceRecipients
from nitro.core.locks import UserLocks
from nitro.core.module import AccountEvent, Module, SessionEvent
from nitro.core.router import StanzaEvent
from nitro.core.sessions import Resource
from nitro.storage.errors import NoSuchAccount, StorageUnavailable
from nitro.storage.models import RosterItem
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.stanza import child, element, iq_result, stanza
from nitro.xmpp.subscription import state_of

if TYPE_CHECKING:
    from nitro.core.context import Core, Session

BLOCKING = "urn:xmpp:blocking"
BLOCKING_ERRORS = "urn:xmpp:blocking:errors"

# Above carbons (-50, -90), the delivery handlers (-100) and presence/roster processing (0): a blocked
# stanza is refused before anything acts on it or copies it.
GUARD_PRIORITY = 50
# A local limit on one user's list (XEP-0191 sets none); past it a block is refused with policy-violation.
MAX_BLOCKED = 10_000
_EMPTY: frozenset[str] = frozenset()  # the block list of most users, shared (a frozenset is 216 bytes)


def candidates(jid: JID) -> Iterator[str]:
    """The list entries that match `jid` (§6, in XEP-0016 order): the JID as is; for user@domain/resource
    also user@domain; and the domain, which matches every address at it."""
    yield str(jid)
    if jid.local is not None and jid.resource is not None:
        yield str(jid.bare)
    yield jid.domain


def blocked_error() -> StanzaError:
    """§3.3: what the user gets for a stanza addressed to a JID the user blocks."""
    return StanzaError(
        "not-acceptable",
        "you have blocked this JID",
        type="cancel",
        app_condition=element(BLOCKING_ERRORS, "blocked"),
    )


def unavailable_storage(exc: Exception) -> StanzaError:
    """RFC 6120 §8.3.3.6 with type 'wait': nothing was written, the client may retry."""
    return StanzaError("internal-server-error", f"block list storage is unavailable: {exc}", type="wait")


class BlockLists:
    """Every user's block list, cached for users with a bound resource; others are read from storage."""

    def __init__(self, server: Core) -> None:
        self.server = server
        self.cache: dict[str, frozenset[str]] = {}
        # Bumped by each write: a read that started before a write must not cache what it read.
        self.epochs: dict[str, int] = {}
        self.locks = UserLocks()

    def online(self, username: str) -> bool:
        """Worth caching: online, and no other node can change the list behind this cache (in a cluster
        the storage tiers keep it, invalidated on every node by each write)."""
        if self.server.config.cluster.node:
            return False
        return bool(self.server.sessions.resources(JID.make(username, self.server.domain)))

    async def get(self, username: str) -> frozenset[str]:
        """The user's list; raises StorageUnavailable only when it is not cached and storage is down."""
        cached = self.cache.get(username)
        if cached is not None:
            return cached
        epoch = self.epochs.get(username, 0)
        loaded = frozenset(await self.server.storage.blocklist.list(username)) or _EMPTY  # most are empty
        if self.epochs.get(username, 0) == epoch and self.online(username):
            return self.cache.setdefault(username, loaded)
        return loaded

    def changed(self, username: str, entries: frozenset[str]) -> None:
        """Record a written list: cached if the user is online, and any read in flight is discarded."""
        self.epochs[username] = self.epochs.get(username, 0) + 1
        if username in self.cache or self.online(username):
            self.cache[username] = entries

    def forget(self, username: str) -> None:
        self.cache.pop(username, None)
        self.epochs.pop(username, None)

    async def blocks(self, user: JID, other: JID) -> bool:
        """Whether the local `user` has blocked `other`. A user's own resources never block each other
        (§5: "MUST NOT block communications from one of a user's resources to another")."""
        known = self.cached_blocks(user, other)
        if known is not None:
            return known
        assert user.local is not None
        return _matches(await self.get(user.local), other)

    def cached_blocks(self, user: JID, other: JID) -> bool | None:
        """`blocks` answered without waiting: None when `user`'s list is not cached and must be read."""
        if user.local is None or user.domain != self.server.domain:
            return False
        if other.local == user.local and other.domain == user.domain:  # the same account (§5)
            return False
        entries = self.cache.get(user.local)
        return None if entries is None else _matches(entries, other)

    async def veto(self, event: PresenceRecipients) -> None:
        """§3.3 for the presence copies the server sends on a user's behalf without routing each one (the
        inbound check of `load`, for all of them): no copy to a JID the sender blocks, nor to a user who
        blocks the sender; when a list cannot be read, that recipient gets nothing."""
        sender, kept = event.from_, []
        for recipient in event.recipients:
            # Both lists cached (every online user's, unless its load at bind failed): no await per copy.
            theirs = self.cached_blocks(recipient, sender)
            ours = False if theirs else self.cached_blocks(sender, recipient)
            refused = theirs or ours
            if theirs is None or ours is None:
                try:
                    refused = await self.blocks(recipient, sender) or await self.blocks(sender, recipient)
                except StorageUnavailable:
                    continue
            if not refused:
                kept.append(recipient)
        event.recipients[:] = kept


def _matches(entries: frozenset[str], other: JID) -> bool:
    return bool(entries) and any(candidate in entries for candidate in candidates(other))


def parse_items(action: etree._Element) -> list[str]:
    """The JIDs of the <item/> children, prepared (RFC 7622) and without repeats, in request order."""
    jids: list[str] = []
    for item in action.iterchildren(f"{{{BLOCKING}}}item"):
        text = item.get("jid")
        if text is None:
            raise StanzaError("bad-request", "an <item/> needs a 'jid' attribute (XEP-0191 §8 schema)")
        try:
            jid = str(JID.parse(text))
        except InvalidJID as exc:
            raise StanzaError("jid-malformed", f"{text!r} is not a JID: {exc}") from exc
        if jid not in jids:
            jids.append(jid)
    return jids


def matching(items: Iterable[RosterItem], entries: Iterable[str]) -> list[JID]:
    """The roster contacts that any of `entries` matches (§6)."""
    wanted = set(entries)
    contacts = []
    for item in items:
        try:
            contact = JID.parse(item.jid)
        except InvalidJID:
            continue
        if any(candidate in wanted for candidate in candidates(contact)):
            contacts.append(contact)
    return contacts


LIST_REQUESTED = "blocklist"  # the Resource flag: it retrieved the block list and gets pushes (§3.2)


class Blocking:
    """The IQ handlers (§3.2 to §3.5) and the presence side effects of blocking and unblocking."""

    def __init__(self, server: Core, lists: BlockLists) -> None:
        self.server = server
        self.lists = lists

    def push(self, user: JID, action: str, jids: Sequence[str]) -> None:
        """§3.3, §3.4, §3.5: the change, to every resource of the user that retrieved the list (§3.2)."""
        for resource in self.server.sessions.resources(user):
            if not resource.has(LIST_REQUESTED):
                continue
            iq = stanza("iq", type="set", id=f"block-push-{secrets.token_hex(6)}", to=str(resource.jid))
            payload = child(iq, BLOCKING, action)
            for jid in jids:
                child(payload, BLOCKING, "item", jid=jid)
            self.server.deliver(resource.jid, iq)

    async def roster(self, username: str) -> tuple[RosterItem, ...]:
        try:
            return (await self.server.storage.rosters.get(username)).items
        except StorageUnavailable:
            return ()  # presence courtesy only: the block itself is stored and in force

    def available(self, user: JID) -> list[Resource]:
        return [resource for resource in self.server.sessions.resources(user) if resource.available]

    async def withdraw_presence(self, user: JID, added: Sequence[str]) -> None:
        """§3.3: unavailable presence to each newly blocked JID allowed to see the user's presence. Also the
        user's clients see the blocked contacts go offline, since their presence will not reach them now.
        Runs before the cache knows of the block, which would otherwise stop these very stanzas."""
        assert user.local is not None
        items = await self.roster(user.local)
        mine = self.available(user)
        subscribers = matching((item for item in items if state_of(item).from_), added)
        for session in mine:
            directed = [t for t in session.directed_to if any(c in added for c in candidates(t))]
            for contact in [*subscribers, *directed]:  # RFC 6121 §4.6: and who got directed presence
                gone = stanza("presence", type="unavailable", from_=str(session.jid), to=str(contact))
                await self.server.router.route(gone)
        for contact in matching((item for item in items if state_of(item).to), added):
            for theirs in self.available(contact):
                for resource in mine:
                    gone = stanza("presence", type="unavailable", from_=str(theirs.jid), to=str(resource.jid))
                    self.server.deliver(resource.jid, gone)

    async def restore_presence(self, user: JID, removed: Sequence[str]) -> None:
        """§3.4: the user's current presence to each unblocked JID allowed to see it; and the user learns
        the presence of unblocked contacts it is subscribed to, through a probe on its behalf."""
        assert user.local is not None
        items = await self.roster(user.local)
        for contact in matching((item for item in items if state_of(item).from_), removed):
            for session in self.available(user):
                current = session.presence  # a new element each time
                if current is None:
                    continue  # went unavailable while we were routing
                current.set("from", str(session.jid))
                current.set("to", str(contact))
                await self.server.router.route(current)
        if self.available(user):
            for contact in matching((item for item in items if state_of(item).to), removed):
                probe = stanza("presence", type="probe", from_=str(user), to=str(contact.bare))
                await self.server.router.route(probe)

    async def get_list(self, event: StanzaEvent) -> bool:
        """§3.2: the list; the resource asking is now interested in pushes."""
        session = _client(event)
        assert session.username is not None
        entries = await self.lists.get(session.username)
        payload = element(BLOCKING, "blocklist")
        for jid in sorted(entries):
            child(payload, BLOCKING, "item", jid=jid)
        session.set_flag(LIST_REQUESTED)
        await event.reply(iq_result(event.stanza, payload))
        return True

    async def block(self, event: StanzaEvent) -> bool:
        """§3.3: store, answer, push; the blocked JIDs see the user go offline."""
        session = _client(event)
        username, user = session.username, session.jid.bare
        assert username is not None
        jids = parse_items(event.stanza[0])
        if not jids:
            raise StanzaError("bad-request", "<block/> needs at least one <item/> (XEP-0191 §3.3)")
        if any(JID.parse(jid).bare == user for jid in jids):
            # §5: one's own resources are never blocked from each other, so such an entry could never
            # take effect; refusing it says so instead of storing a rule that is silently ignored.
            raise StanzaError("not-acceptable", "you cannot block your own JID (XEP-0191 §5)")
        async with self.lists.locks.hold(username):
            try:
                before = await self.lists.get(username)
                after = before | frozenset(jids)
                if len(after) > MAX_BLOCKED:
                    raise StanzaError("policy-violation", f"a block list holds at most {MAX_BLOCKED} JIDs")
                await self.server.storage.blocklist.add(username, jids)
            except NoSuchAccount as exc:
                raise StanzaError("internal-server-error", "the account no longer exists") from exc
            await self.withdraw_presence(user, [jid for jid in jids if jid not in before])
            self.lists.changed(username, after)
        await event.reply(iq_result(event.stanza))
        self.push(user, "block", jids)
        return True

    async def unblock(self, event: StanzaEvent) -> bool:
        """§3.4, and §3.5 for an <unblock/> without items: store, answer, push, show presence again."""
        session = _client(event)
        username, user = session.username, session.jid.bare
        assert username is not None
        jids = parse_items(event.stanza[0])
        async with self.lists.locks.hold(username):
            before = await self.lists.get(username)
            if jids:
                await self.server.storage.blocklist.remove(username, jids)
            else:
                await self.server.storage.blocklist.clear(username)
            removed = [jid for jid in jids if jid in before] if jids else sorted(before)
            self.lists.changed(username, before - frozenset(removed))
        await event.reply(iq_result(event.stanza))
        self.push(user, "unblock", jids)
        await self.restore_presence(user, removed)
        return True


def _client(event: StanzaEvent) -> Session:
    if event.origin is None or event.origin.username is None:
        raise StanzaError("not-allowed", "only the user's own clients manage the block list")
    return event.origin


def load(module: Module) -> None:
    server = module.server
    lists = BlockLists(server)
    blocking = Blocking(server, lists)
    module.add_feature(BLOCKING)

    async def outbound(event: StanzaEvent) -> bool:
        """From the user's client (pre- events). §3.3: nothing reaches a JID the user blocks; and an IQ for a
        user who blocks the sender is refused here, before a handler answers on that user's behalf."""
        assert event.to is not None
        if await lists.blocks(event.from_, event.to):
            if event.type == "error" or (event.kind == "iq" and event.type == "result"):
                return True  # never answer an error or a result with an error: dropped
            raise blocked_error()
        if event.kind == "iq" and event.type in ("get", "set") and await lists.blocks(event.to, event.from_):
            raise StanzaError("service-unavailable")
        return False

    async def inbound(event: StanzaEvent) -> bool:
        """For a local user (recipient events). §3.3: from a blocked JID, messages and IQ requests get
        service-unavailable (the block is not revealed) and the rest is dropped; and nothing the server
        sends on a user's behalf (presence broadcasts, probe answers) reaches a JID that user blocks."""
        assert event.to is not None
        kind, to, sender = event.kind, event.to, event.from_
        if (
            kind == "presence"
            and event.type in (None, "unavailable", "error")
            and not server.sessions.online(to.bare)
        ):
            return False  # delivered to nobody anyway (RFC 6121 §8.5.2.2.2): spare the lookup
        try:
            refused = await lists.blocks(to, sender)
            if not refused and await lists.blocks(sender, to):
                return True
        except StorageUnavailable as exc:
            if kind == "presence":
                return True  # nobody can be told, and a presence from a blocked JID must not pass
            raise unavailable_storage(exc) from exc
        if not refused:
            return False
        if kind == "message" or (kind == "iq" and event.type in ("get", "set")):
            raise StanzaError("service-unavailable")  # the router never answers an error stanza
        return True

    async def on_bind(event: SessionEvent) -> None:
        if event.session.username is None:
            return
        try:
            await lists.get(event.session.username)
        except StorageUnavailable:
            event.session.log.warning("block list not loaded: storage unavailable; retried on use")

    async def on_unbind(event: SessionEvent) -> None:
        username = event.session.username
        if username is not None and not lists.online(username):
            lists.forget(username)

    async def on_deleted(event: AccountEvent) -> None:
        lists.forget(event.username)

    module.hook(f"iq-get/self/{BLOCKING}:blocklist", blocking.get_list)
    module.hook(f"iq-set/self/{BLOCKING}:block", blocking.block)
    module.hook(f"iq-set/self/{BLOCKING}:unblock", blocking.unblock)
    for to_type in ("bare", "full"):
        for kind in ("message", "presence", "iq"):
            module.hook(f"pre-{kind}/{to_type}", outbound, priority=GUARD_PRIORITY)
            module.hook(f"{kind}/{to_type}", inbound, priority=GUARD_PRIORITY)
    module.hook(PRESENCE_RECIPIENTS, lists.veto, priority=GUARD_PRIORITY)
    module.hook("resource-bind", on_bind, priority=100)
    # After presence's own unbind handler (priority 0), whose unavailable broadcast still needs the list.
    module.hook("resource-unbind", on_unbind, priority=-100)
    module.hook("account-deleted", on_deleted)
