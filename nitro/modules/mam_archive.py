"""The archiving side of MAM (XEP-0313): which messages are stored for whom with a XEP-0359 stanza id,
how a parsed query becomes one page of the archive, and the retention sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from lxml import etree

from nitro.config import ConfigError
from nitro.core.durability import promise
from nitro.core.module import Module
from nitro.core.router import StanzaEvent
from nitro.modules.archive_writer import ArchiveWriter
from nitro.modules.mam_query import ARCHIVED_PARSER, MODES, Answer, Request
from nitro.modules.message import message_type
from nitro.storage.errors import ItemNotFound, NoSuchAccount, StorageError
from nitro.storage.models import ArchivedMessage, ArchivePrefs, ArchiveQuery, ArchiveRow
from nitro.xmpp import ns
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.rsm import PageInfo

if TYPE_CHECKING:
    from nitro.core.context import Core

SID = "urn:xmpp:sid:0"  # XEP-0359
HINTS = "urn:xmpp:hints"  # XEP-0334
_HINTS_CLARK = f"{{{HINTS}}}"  # how the tags of its elements begin
_BODY = f"{{{ns.CLIENT}}}body"
RETENTION_INTERVAL = 3600.0  # seconds between two retention sweeps
PREFS_CACHED = 10_000  # users whose preferences the archive keeps in memory (embedded default only)
RESOURCE_SCAN_PAGES = 20  # a full-JID 'with' filters in Python over at most this many storage pages
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # base32 whose digits sort like the numbers they encode
_DIGIT_PAIRS = tuple(high + low for high in _CROCKFORD for low in _CROCKFORD)  # 10 bits -> two digits
_RANDOM_DIGIT = bytes(ord(_CROCKFORD[byte & 31]) for byte in range(256))  # 256 = 8 x 32: still uniform
_MS_MASK = (1 << 48) - 1
_STANZA_ID = f"{{{SID}}}stanza-id"
_SID_NSMAP = ns.default_ns(SID)


def new_archive_id(now_ms: int | None = None) -> str:
    """A XEP-0359 id, 26 characters: 48 bits of milliseconds then 80 random bits (XEP-0313 §3: unpredictable).

    Ids sort by creation time to the millisecond; the archive's own order is the storage's arrival order.
    The time is the first ten digits (two zero bits, then 48); each of the 16 random digits is 5 bits of a
    random byte.
    """
    moment = (time.time_ns() // 1_000_000 if now_ms is None else now_ms) & _MS_MASK
    pairs = _DIGIT_PAIRS
    return (
        pairs[moment >> 40]
        + pairs[(moment >> 30) & 1023]
        + pairs[(moment >> 20) & 1023]
        + pairs[(moment >> 10) & 1023]
        + pairs[moment & 1023]
        + os.urandom(16).translate(_RANDOM_DIGIT).decode()
    )


def archivable(message: etree._Element) -> bool:
    """XEP-0313 §6.1.1: chat and normal messages with a body; not errors, headlines or groupchat.

    XEP-0334 hints: `<no-store/>` and `<no-permanent-store/>` keep a message out, `<store/>` lets a
    body-less chat or normal message in.
    """
    if message_type(message) not in ("chat", "normal"):
        return False
    hints: set[str] = set()
    body = False
    for node in message:  # one pass over the children (each visit makes a proxy object)
        tag = node.tag
        if not isinstance(tag, str):
            continue
        if tag == _BODY:
            body = True
        elif tag.startswith(_HINTS_CLARK):
            hints.add(tag[len(_HINTS_CLARK) :])
    if hints & {"no-store", "no-permanent-store"}:
        return False
    return body or "store" in hints


def strip_stanza_ids(message: etree._Element, *archives: JID) -> None:
    """XEP-0359 §3 rules 3-4: only we stamp ids for `archives`; a stanza-id claiming one is forged."""
    for node in list(message.iterchildren(_STANZA_ID)):  # in C, where findall's path matching is Python
        with contextlib.suppress(InvalidJID):
            if JID.parse(node.get("by") or "") in archives:
                message.remove(node)


def stamp_stanza_id(message: etree._Element, archive_id: str, archive: JID) -> None:
    """XEP-0359 §3: `<stanza-id by=archive id=archive_id/>`, last child of the message."""
    node = etree.SubElement(message, _STANZA_ID, nsmap=_SID_NSMAP)  # never the message's own namespace
    node.set("id", archive_id)
    node.set("by", str(archive))


def listed(jids: tuple[str, ...], target: JID) -> bool:
    """XEP-0441 §2.3.1: a listed full JID matches the target as is, a listed bare JID its bare JID."""
    for text in jids:
        try:
            jid = JID.parse(text)
        except InvalidJID:
            continue
        if jid == (target if jid.resource is not None else target.bare):
            return True
    return False


class Archive:
    """The archive side of the module: what to store for whom, and how to answer a query."""

    def __init__(self, server: Core, module: Module) -> None:
        self.server = server
        self.store = server.storage.archive
        self.log = module.log
        config = server.config.archive
        default = MODES.get(config.default)
        if default is None:
            raise ConfigError(f"[archive] default: {config.default!r} is not always, never or roster")
        self.default_prefs = ArchivePrefs(default)
        self.max_page_size = max(1, config.max_page_size)
        self.writer = ArchiveWriter(self.store, lambda: server.config.archive)
        # Deciding whether to archive must not wait for SQL on the delivery path. Without a ring this
        # process is the only writer of preferences (they change through `prefs`, accounts through the
        # account events), so it may remember them; with a ring, the tiers cache them (nitro/storage).
        single = server.tiers is None or server.tiers.ring is None
        self._prefs: OrderedDict[str, ArchivePrefs | None] | None = OrderedDict() if single else None
        self._prefs_changes = 0  # bumped by `forget`: a read that overlapped a change is not kept

    # -- archiving ------------------------------------------------------------------------------

    async def wanted(self, username: str, owner: JID, peer: JID) -> bool:
        """XEP-0441 §2: the never list wins, then the always list, then the default."""
        prefs = await self.prefs_of(username) or self.default_prefs
        if listed(prefs.never, peer):
            return False
        if listed(prefs.always, peer):
            return True
        if prefs.default == "roster":
            return (
                peer.bare == owner
                or await self.server.storage.rosters.get_item(username, str(peer.bare)) is not None
            )
        return prefs.default == "always"

    async def prefs_of(self, username: str) -> ArchivePrefs | None:
        """The user's stored preferences (None: never set), remembered when this process alone writes them."""
        cache = self._prefs
        if cache is not None and username in cache:
            cache.move_to_end(username)
            return cache[username]
        changes = self._prefs_changes
        prefs = await self.store.get_prefs(username)
        if cache is not None and changes == self._prefs_changes:
            cache[username] = prefs
            if len(cache) > PREFS_CACHED:
                cache.popitem(last=False)
        return prefs

    def forget(self, username: str) -> None:
        """The user's preferences changed, or the account came or went."""
        self._prefs_changes += 1
        if self._prefs is not None:
            self._prefs.pop(username, None)

    async def archive(self, owner: JID, peer: JID, message: etree._Element) -> str | None:
        """Queue `message` for `owner`'s archive; its id, or None when not archived.

        The row is written in the background (ArchiveWriter); the stanza being handled is acknowledged to
        its sender only once the row is committed (nitro/core/durability.py). Preferences that cannot be
        read leave the message unarchived: a failing archive never stops delivery.
        """
        assert owner.local is not None
        try:
            if not await self.wanted(owner.local, owner, peer):
                return None
        except NoSuchAccount:
            return None
        except StorageError as exc:
            self.log.warning("message %s not archived for %s: %s", message.get("id"), owner, exc)
            return None
        archive_id = new_archive_id()
        row = ArchiveRow(
            username=owner.local,
            with_jid=str(peer.bare),
            stanza=etree.tostring(message, encoding="utf-8", xml_declaration=False),
            stanza_id=archive_id,
            timestamp=datetime.datetime.now(datetime.UTC),
        )
        promise(await self.writer.submit(row))
        return archive_id

    async def on_incoming(self, event: StanzaEvent) -> None:
        """Recipient side: archive for the recipient and stamp the id before delivery (§3.5)."""
        assert event.to is not None
        owner = event.to.bare
        sender = event.from_.bare
        if sender != owner and sender.local is not None and sender.domain == self.server.domain:
            # §3.5: a local sender's archive id is not for others
            strip_stanza_ids(event.stanza, owner, sender)
        else:
            strip_stanza_ids(event.stanza, owner)
        if archivable(event.stanza) and (archive_id := await self.archive(owner, event.from_, event.stanza)):
            stamp_stanza_id(event.stanza, archive_id, owner)

    async def on_outgoing(self, event: StanzaEvent) -> None:
        """Sender side: archive for the sender. §3.5: its id goes to the sender's carbons (XEP-0280) only,
        so it is stamped here, before the sent copies are made, and taken off on the recipient side.
        """
        owner = event.from_.bare
        strip_stanza_ids(event.stanza, owner)
        if event.to is None or event.to.bare == owner:
            return  # to oneself: archived once, on the recipient side (§6.1.1)
        if archivable(event.stanza) and (archive_id := await self.archive(owner, event.to, event.stanza)):
            stamp_stanza_id(event.stanza, archive_id, owner)

    # -- queries --------------------------------------------------------------------------------

    async def answer(self, username: str, request: Request) -> Answer:
        """One page for `request`; ItemNotFound for an id that is not in the archive (§4.1.3, §4.3.2)."""
        await self.writer.flush(username)  # the user's own messages of a moment ago are in the result
        page = request.page
        lower = request.after_id or page.after
        upper = request.before_id or page.before or None
        refs = [ref for ref in (request.after_id, page.after, request.before_id, page.before) if ref]
        if request.filters.ids or len(set(refs)) > 1:
            order = await self._positions(username, (*refs, *(request.filters.ids or ())))
            if request.after_id and page.after:  # the later of two lower bounds
                lower = max(request.after_id, page.after, key=order.__getitem__)
            if request.before_id and page.before:  # the earlier of two upper bounds
                upper = min(request.before_id, page.before, key=order.__getitem__)
            if lower and upper and order[lower] >= order[upper]:
                return Answer((), True, PageInfo())
        backward = page.backward
        stop_at = None
        base = dataclasses.replace(request.filters, after_id=lower)
        if backward:
            base = dataclasses.replace(base, before_id=upper or "")
        elif upper:
            # §9: before-id ends the result but paging still goes forward: find the last match before it.
            tail = await self.store.query(username, dataclasses.replace(base, before_id=upper, limit=1))
            if not tail.messages:
                return Answer((), True, PageInfo())
            stop_at = tail.messages[-1].id
        if request.with_full is not None:
            with_full = request.with_full
            return await self._scan(username, base, lambda m: _involves(m, with_full), stop_at)
        result = await self.store.query(username, base)
        messages, complete = result.messages, result.complete
        if stop_at is not None and stop_at in (ids := [m.id for m in messages]):
            messages, complete = messages[: ids.index(stop_at) + 1], True
        # RSM count and index describe the result set; after-id/before-id narrow it below what storage counts.
        exact = request.after_id is None and request.before_id is None
        return Answer(
            messages,
            complete,
            PageInfo(
                first=messages[0].id if messages else None,
                first_index=result.first_index if exact and messages else None,
                last=messages[-1].id if messages else None,
                count=result.count if exact else None,
            ),
        )

    async def _positions(self, username: str, ids: tuple[str, ...]) -> dict[str, int]:
        """Archive order of these ids; ItemNotFound unless every one is archived (§4.1.3)."""
        unique = tuple(dict.fromkeys(ids))
        found = await self.store.query(username, ArchiveQuery(ids=unique, limit=len(unique)))
        if found.count != len(unique):
            raise ItemNotFound("no archived message has one of these ids")
        return {message.id: index for index, message in enumerate(found.messages)}

    async def _scan(
        self,
        username: str,
        base: ArchiveQuery,
        keep: Callable[[ArchivedMessage], bool],
        stop_at: str | None,
    ) -> Answer:
        """A page filtered in Python (a 'with' with a resource), walking at most RESOURCE_SCAN_PAGES pages.

        No count or index is known. When the walk stops early, the RSM <last/> (or <first/> going back)
        names the last message looked at, so that the next page continues from there.
        """
        backward = base.before_id is not None
        cursor = dataclasses.replace(base, limit=self.max_page_size)
        taken: list[ArchivedMessage] = []
        edge: str | None = None
        complete = done = False
        for _ in range(RESOURCE_SCAN_PAGES):
            page = await self.store.query(username, cursor)
            for message in reversed(page.messages) if backward else page.messages:
                edge = message.id
                if keep(message):
                    taken.append(message)
                if len(taken) > base.limit:  # one more than the page holds: the result goes on
                    done = True
                    break
                if message.id == stop_at:  # the last match before before-id: the result ends here
                    complete = done = True
                    break
            if not done and page.complete:
                complete = done = True
            if done:
                break
            if backward:
                cursor = dataclasses.replace(cursor, before_id=edge)
            else:
                cursor = dataclasses.replace(cursor, after_id=edge)
        taken = taken[: base.limit]
        if backward:
            taken.reverse()
        first = taken[0].id if taken else None
        last = taken[-1].id if taken else None
        if not done and edge is not None:  # the walk ran out, not the result: resume from where it stopped
            first, last = (edge, last) if backward else (first, edge)
        return Answer(tuple(taken), complete, PageInfo(first=first, last=last))


def _involves(message: ArchivedMessage, jid: JID) -> bool:
    """§4.1.1: a full 'with' matches the stanza's 'to' or 'from' exactly."""
    try:
        original = etree.fromstring(message.stanza, ARCHIVED_PARSER)
    except etree.XMLSyntaxError:
        return False
    for address in (original.get("from"), original.get("to")):
        with contextlib.suppress(InvalidJID):
            if address is not None and JID.parse(address) == jid:
                return True
    return False


async def retention(archive: Archive, keep: datetime.timedelta, stopped: asyncio.Event) -> None:
    """XEP-0313 §3.2: the oldest messages go first, so the archive never has holes. Now, then hourly."""
    while not stopped.is_set():
        try:
            deleted = await archive.store.expire(datetime.datetime.now(datetime.UTC) - keep)
        except StorageError as exc:
            archive.log.warning("archive retention failed, trying again later: %s", exc)
        else:
            archive.log.debug("archive retention deleted %d messages", deleted)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), RETENTION_INTERVAL)
