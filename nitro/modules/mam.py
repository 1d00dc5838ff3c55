"""Message Archive Management (XEP-0313 v1.1, urn:xmpp:mam:2) of user archives: archiving with stanza ids
(XEP-0359), queries paged by Result Set Management (XEP-0059), preferences (XEP-0441) and retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

from lxml import etree

from nitro.config import ConfigError
from nitro.core.module import Module
from nitro.core.router import StanzaEvent
from nitro.modules.disco import DiscoEvent
from nitro.modules.message import message_type
from nitro.storage.errors import ItemNotFound, NoSuchAccount, StorageError
from nitro.storage.models import ArchiveDefault, ArchivedMessage, ArchivePrefs, ArchiveQuery
from nitro.xmpp import ns
from nitro.xmpp.dataforms import Field, Form, InvalidForm, find_form, form_type_field
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.rsm import InvalidSet, PageInfo, PageRequest, find_set
from nitro.xmpp.stanza import child, element, iq_result, stanza, utc_stamp

if TYPE_CHECKING:
    from nitro.core.context import Core

MAM = "urn:xmpp:mam:2"
MAM_EXTENDED = "urn:xmpp:mam:2#extended"  # §7: before-id/after-id/ids, flipped pages, metadata
MAM_GROUPCHAT_FIELD = "urn:xmpp:mam:2#groupchat-field"  # §7: we understand 'include-groupchat'
SID = "urn:xmpp:sid:0"  # XEP-0359
MAM_QUERIED = "mam-queried"  # Resource flag: the client queried its archive during this session
FORWARD = "urn:xmpp:forward:0"  # XEP-0297
HINTS = "urn:xmpp:hints"  # XEP-0334
XDATA_VALIDATE = "http://jabber.org/protocol/xdata-validate"  # XEP-0122
FEATURES = (MAM, MAM_EXTENDED, MAM_GROUPCHAT_FIELD, SID)

# Above carbons (sent copies at -50, received at -90) and delivery (-100): copies carry the stanza-id.
ARCHIVE_PRIORITY = -40
DEFAULT_PAGE_SIZE = 50  # XEP-0313 §4.3.1: our page size when the client names none (capped by config)
RETENTION_INTERVAL = 3600.0  # seconds between two retention sweeps
RESOURCE_SCAN_PAGES = 20  # a full-JID 'with' filters in Python over at most this many storage pages
MAX_PREFS_JIDS = 1000  # per list of XEP-0441 preferences

_MODES: dict[str, ArchiveDefault] = {mode: mode for mode in get_args(ArchiveDefault)}
_FIELDS = frozenset({"with", "start", "end", "before-id", "after-id", "ids", "include-groupchat"})
# XEP-0082 DateTime: a time zone is mandatory, fractions of a second optional.
_DATETIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", re.ASCII)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # base32 whose digits sort like the numbers they encode
# Archived stanzas are our own serialization; still never let parsing reach the network or expand entities.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def new_archive_id(now_ms: int | None = None) -> str:
    """A XEP-0359 id, 26 characters: 48 bits of milliseconds then 80 random bits (XEP-0313 §3: unpredictable).

    Ids sort by creation time to the millisecond; the archive's own order is the storage's arrival order.
    """
    moment = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    value = (moment & (1 << 48) - 1) << 80 | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def archivable(message: etree._Element) -> bool:
    """XEP-0313 §6.1.1: chat and normal messages with a body; not errors, headlines or groupchat.

    XEP-0334 hints: `<no-store/>` and `<no-permanent-store/>` keep a message out, `<store/>` lets a
    body-less chat or normal message in.
    """
    if message_type(message) not in ("chat", "normal"):
        return False
    hints = {
        etree.QName(node).localname
        for node in message
        if isinstance(node.tag, str) and etree.QName(node).namespace == HINTS
    }
    if hints & {"no-store", "no-permanent-store"}:
        return False
    return "store" in hints or message.find(f"{{{ns.CLIENT}}}body") is not None


def strip_stanza_ids(message: etree._Element, archive: JID) -> None:
    """XEP-0359 §3 rules 3-4: only we stamp ids for `archive`; a stanza-id claiming it is forged."""
    for node in message.findall(f"{{{SID}}}stanza-id"):
        with contextlib.suppress(InvalidJID):
            if JID.parse(node.get("by") or "") == archive:
                message.remove(node)


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


def parse_datetime(text: str) -> datetime.datetime:
    """XEP-0082 §3.3 DateTime, in UTC; ValueError if `text` is not one."""
    match = _DATETIME.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a XEP-0082 DateTime")
    seconds, fraction, zone = match.groups()
    fraction = (fraction or "")[:7]  # Python keeps microseconds
    return datetime.datetime.fromisoformat(f"{seconds}{fraction}{zone}").astimezone(datetime.UTC)


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed archive query (XEP-0313 §4): the filters, the MAM id range and the RSM page."""

    filters: ArchiveQuery  # with (bare), start, end, ids and the page size; no bounds yet
    with_full: JID | None  # a 'with' carrying a resource, matched in Python
    after_id: str | None  # §4.1.3 after-id
    before_id: str | None  # §4.1.3 before-id: bounds the result, does not page backward (§9)
    page: PageRequest
    flip: bool  # §4.3.4 <flip-page/>
    queryid: str | None


def _bad(text: str) -> StanzaError:
    return StanzaError("bad-request", text)


def parse_request(query: etree._Element, max_page_size: int) -> Request:
    """The `<query xmlns='urn:xmpp:mam:2'/>` of an archive query; raises the StanzaError to answer."""
    try:
        form = find_form(query)
        page = find_set(query) or PageRequest()
    except (InvalidForm, InvalidSet) as exc:
        raise _bad(str(exc)) from exc
    values: dict[str, tuple[str, ...]] = {}
    if form is not None:
        if form.type != "submit" or form.form_type not in (None, MAM):
            raise _bad(f"the query form is a submitted form of FORM_TYPE {MAM} (XEP-0313 §4.1)")
        for field in form.fields:
            if field.var == "FORM_TYPE":
                continue
            if field.var not in _FIELDS:  # §4.1.5: an unknown field is feature-not-implemented
                raise StanzaError("feature-not-implemented", f"no query field {field.var!r}")
            if field.var in values:
                raise _bad(f"field {field.var!r} given twice")
            values[field.var] = field.values

    def single(var: str) -> str | None:
        given = values.get(var, ())
        if len(given) > 1:
            raise _bad(f"field {var!r} takes one value")
        if given and not given[0].strip():
            raise _bad(f"field {var!r} is empty")
        return given[0].strip() if given else None

    with_jid = None
    if (text := single("with")) is not None:
        try:
            with_jid = JID.parse(text)
        except InvalidJID as exc:
            raise _bad(f"'with' is not a JID: {exc}") from exc
    try:
        start = parse_datetime(text) if (text := single("start")) is not None else None
        end = parse_datetime(text) if (text := single("end")) is not None else None
    except ValueError as exc:
        raise _bad(str(exc)) from exc
    if single("include-groupchat") not in (None, "true", "false", "1", "0"):
        raise _bad("'include-groupchat' is a boolean")  # we archive no groupchat: either value is fine
    ids = tuple(dict.fromkeys(value.strip() for value in values.get("ids", ()) if value.strip())) or None
    if ids is not None and len(ids) > max_page_size:
        raise StanzaError("policy-violation", f"at most {max_page_size} ids per query")
    if page.index not in (None, 0) or (page.index == 0 and (page.after or page.before is not None)):
        # XEP-0059 §2.6: pages out of order are optional; index 0 is simply the first page.
        raise StanzaError("feature-not-implemented", "RSM <index/> is not supported")
    # XEP-0313 §4.3.1: the server may return fewer items than asked; a max of 10^9 gets a full page.
    limit = min(DEFAULT_PAGE_SIZE if page.max is None else page.max, max_page_size)
    return Request(
        filters=ArchiveQuery(
            with_jid=str(with_jid.bare) if with_jid is not None else None,
            start=start,
            end=end,
            ids=ids,
            limit=limit,
        ),
        with_full=with_jid if with_jid is not None and with_jid.resource is not None else None,
        after_id=single("after-id"),
        before_id=single("before-id"),
        page=page,
        flip=query.find(f"{{{MAM}}}flip-page") is not None,
        queryid=query.get("queryid"),
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """The messages of one page in chronological order, whether it ends the result, and the RSM reply."""

    messages: tuple[ArchivedMessage, ...]
    complete: bool
    info: PageInfo


def query_form() -> etree._Element:
    """§4.1.5: the fields a query may use; 'ids' is open to any value (XEP-0122)."""
    fields = [
        form_type_field(MAM),
        Field("with", "jid-single"),
        Field("start", "text-single"),
        Field("end", "text-single"),
        Field("before-id", "text-single"),
        Field("after-id", "text-single"),
        Field("ids", "list-multi"),
        Field("include-groupchat", "boolean"),
    ]
    x = Form("form", tuple(fields)).to_element()
    ids = x.find(f"{{{ns.DATA_FORMS}}}field[@var='ids']")
    assert ids is not None
    validate = child(ids, XDATA_VALIDATE, "validate", datatype="xs:string")
    child(validate, XDATA_VALIDATE, "open")
    return x


def prefs_element(prefs: ArchivePrefs) -> etree._Element:
    """XEP-0441 §2.1: the default and both lists, present even when empty."""
    node = element(MAM, "prefs", default=prefs.default)
    for name, jids in (("always", prefs.always), ("never", prefs.never)):
        group = child(node, MAM, name)
        for jid in jids:
            child(group, MAM, "jid", jid)
    return node


def parse_prefs(node: etree._Element) -> ArchivePrefs:
    """A submitted `<prefs/>` (XEP-0441 §2.1); a JID in both lists is never archived."""
    default = _MODES.get(node.get("default") or "")
    if default is None:
        raise _bad("'default' is one of always, never or roster (XEP-0441 §2.1.1)")
    lists: dict[str, tuple[str, ...]] = {}
    for name in ("always", "never"):
        groups = node.findall(f"{{{MAM}}}{name}")
        if len(groups) > 1:
            raise _bad(f"more than one <{name}/>")
        texts = [(jid.text or "").strip() for group in groups for jid in group.iterchildren(f"{{{MAM}}}jid")]
        if len(texts) > MAX_PREFS_JIDS:
            raise StanzaError("policy-violation", f"at most {MAX_PREFS_JIDS} JIDs per list")
        try:
            lists[name] = tuple(dict.fromkeys(str(JID.parse(text)) for text in texts))
        except InvalidJID as exc:
            raise StanzaError("jid-malformed", f"<{name}/>: {exc}") from exc
    never = lists["never"]
    return ArchivePrefs(default, tuple(j for j in lists["always"] if j not in never), never)


class Archive:
    """The archive side of the module: what to store for whom, and how to answer a query."""

    def __init__(self, server: Core, module: Module) -> None:
        self.server = server
        self.store = server.storage.archive
        self.log = module.log
        config = server.config.archive
        default = _MODES.get(config.default)
        if default is None:
            raise ConfigError(f"[archive] default: {config.default!r} is not always, never or roster")
        self.default_prefs = ArchivePrefs(default)
        self.max_page_size = max(1, config.max_page_size)

    # -- archiving ------------------------------------------------------------------------------

    async def wanted(self, username: str, owner: JID, peer: JID) -> bool:
        """XEP-0441 §2: the never list wins, then the always list, then the default."""
        prefs = await self.store.get_prefs(username) or self.default_prefs
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

    async def archive(self, owner: JID, peer: JID, message: etree._Element) -> str | None:
        """Append `message` to `owner`'s archive; its id, or None when not archived.

        Best effort: a failing archive never stops delivery (the message is then simply not archived).
        """
        assert owner.local is not None
        try:
            if not await self.wanted(owner.local, owner, peer):
                return None
            archive_id = new_archive_id()
            await self.store.append(
                owner.local,
                with_jid=str(peer.bare),
                stanza=etree.tostring(message, encoding="utf-8", xml_declaration=False),
                stanza_id=archive_id,
                timestamp=datetime.datetime.now(datetime.UTC),
            )
        except NoSuchAccount:
            return None
        except StorageError as exc:
            self.log.warning("message %s not archived for %s: %s", message.get("id"), owner, exc)
            return None
        return archive_id

    async def on_incoming(self, event: StanzaEvent) -> None:
        """Recipient side: archive for the recipient and stamp the id before delivery (§3.5)."""
        assert event.to is not None
        owner = event.to.bare
        strip_stanza_ids(event.stanza, owner)
        sender = event.from_.bare
        if sender != owner and sender.local is not None and sender.domain == self.server.domain:
            strip_stanza_ids(event.stanza, sender)  # §3.5: a local sender's archive id is not for others
        if archivable(event.stanza) and (archive_id := await self.archive(owner, event.from_, event.stanza)):
            child(event.stanza, SID, "stanza-id", id=archive_id, by=str(owner))

    async def on_outgoing(self, event: StanzaEvent) -> None:
        """Sender side: archive for the sender. §3.5: its id goes to the sender's carbons (XEP-0280) only,
        so it is stamped here, before the sent copies are made, and taken off on the recipient side.
        """
        owner = event.from_.bare
        strip_stanza_ids(event.stanza, owner)
        if event.to is None or event.to.bare == owner:
            return  # to oneself: archived once, on the recipient side (§6.1.1)
        if archivable(event.stanza) and (archive_id := await self.archive(owner, event.to, event.stanza)):
            child(event.stanza, SID, "stanza-id", id=archive_id, by=str(owner))

    # -- queries --------------------------------------------------------------------------------

    async def answer(self, username: str, request: Request) -> Answer:
        """One page for `request`; ItemNotFound for an id that is not in the archive (§4.1.3, §4.3.2)."""
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
        original = etree.fromstring(message.stanza, _PARSER)
    except etree.XMLSyntaxError:
        return False
    for address in (original.get("from"), original.get("to")):
        with contextlib.suppress(InvalidJID):
            if address is not None and JID.parse(address) == jid:
                return True
    return False


def result_message(owner: JID, to: JID, queryid: str | None, item: ArchivedMessage) -> etree._Element:
    """§4.2: one archived message, forwarded (XEP-0297) with its archiving time (XEP-0203)."""
    message = stanza("message", to=str(to), from_=str(owner))
    result = child(message, MAM, "result")
    if queryid is not None:
        result.set("queryid", queryid)
    result.set("id", item.id)
    forwarded = child(result, FORWARD, "forwarded")
    child(forwarded, ns.DELAY, "delay", stamp=utc_stamp(item.timestamp))
    with contextlib.suppress(etree.XMLSyntaxError):  # §3.2: an unreadable message is left out, the id stays
        forwarded.append(etree.fromstring(item.stanza, _PARSER))
    return message


def load(module: Module) -> None:
    server = module.server
    archive = Archive(server, module)
    for feature in FEATURES:
        module.add_feature(feature)

    def owner_of(event: StanzaEvent) -> tuple[JID, str]:
        owner = event.from_.bare
        if owner.local is None:
            raise StanzaError("forbidden", "only users have archives here")
        return owner, owner.local

    async def on_query(event: StanzaEvent) -> bool:
        owner, username = owner_of(event)
        query = event.stanza.find(f"{{{MAM}}}query")
        assert query is not None
        if event.origin is not None:
            event.origin.set_flag(MAM_QUERIED)  # it syncs from the archive (see stream_management)
        if query.get("node") is not None:
            raise StanzaError("item-not-found", "a user archive has no nodes (XEP-0442)")
        request = parse_request(query, archive.max_page_size)
        try:
            answer = await archive.answer(username, request)
        except ItemNotFound as exc:
            raise StanzaError("item-not-found", "no archived message has this id") from exc
        for item in reversed(answer.messages) if request.flip else answer.messages:
            reply = result_message(owner, event.from_, request.queryid, item)
            if event.origin is not None:
                event.origin.send(reply)
            else:
                await server.router.route(reply)
        fin = element(MAM, "fin", complete="true" if answer.complete else "false")
        fin.append(answer.info.to_element())
        await event.reply(iq_result(event.stanza, fin))
        return True

    async def on_form(event: StanzaEvent) -> bool:
        owner_of(event)
        query = element(MAM, "query")
        query.append(query_form())
        await event.reply(iq_result(event.stanza, query))
        return True

    async def on_metadata(event: StanzaEvent) -> bool:
        """§5: the first and the last message of the archive; empty for an empty archive."""
        _owner, username = owner_of(event)
        metadata = element(MAM, "metadata")
        first = await archive.store.query(username, ArchiveQuery(limit=1, with_count=False))
        last = await archive.store.query(username, ArchiveQuery(before_id="", limit=1, with_count=False))
        for name, page in (("start", first), ("end", last)):
            if page.messages:
                item = page.messages[0]
                child(metadata, MAM, name, id=item.id, timestamp=utc_stamp(item.timestamp))
        await event.reply(iq_result(event.stanza, metadata))
        return True

    async def on_prefs(event: StanzaEvent) -> bool:
        _owner, username = owner_of(event)
        node = event.stanza.find(f"{{{MAM}}}prefs")
        assert node is not None
        try:
            if event.type == "set":
                prefs = parse_prefs(node)
                await archive.store.set_prefs(username, prefs)  # durable before the result
            else:
                prefs = await archive.store.get_prefs(username) or archive.default_prefs
        except NoSuchAccount as exc:
            raise StanzaError("item-not-found", "no such account") from exc
        await event.reply(iq_result(event.stanza, prefs_element(prefs)))
        return True

    async def someone_elses(event: StanzaEvent) -> bool:
        raise StanzaError("forbidden", "an archive is for its owner only (XEP-0313 §8.1)")

    async def account_features(disco: DiscoEvent) -> None:
        for feature in FEATURES:  # §7: on the archiving JID, the user's bare JID
            disco.add_feature(feature)

    for hook in ("message/bare", "message/full"):
        module.hook(hook, archive.on_incoming, priority=ARCHIVE_PRIORITY)
    for hook in ("pre-message/bare", "pre-message/full"):
        module.hook(hook, archive.on_outgoing, priority=ARCHIVE_PRIORITY)
    for name, handler in (
        (f"iq-set/self/{MAM}:query", on_query),
        (f"iq-get/self/{MAM}:query", on_form),
        (f"iq-get/self/{MAM}:metadata", on_metadata),
        (f"iq-get/self/{MAM}:prefs", on_prefs),
        (f"iq-set/self/{MAM}:prefs", on_prefs),
    ):
        module.hook(name, handler)
        module.hook(name.replace("/self/", "/bare/"), someone_elses)
    module.hook("disco-info/account", account_features)

    retention_days = server.config.archive.retention_days
    if retention_days > 0:
        stopped = asyncio.Event()
        module.on_unload(stopped.set)
        server.spawn(_retention(archive, datetime.timedelta(days=retention_days), stopped))


async def _retention(archive: Archive, keep: datetime.timedelta, stopped: asyncio.Event) -> None:
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
