"""XEP-0313 archive queries on the wire, pure: the query form and RSM set parsed into a Request, the
query form we advertise, XEP-0441 preferences, and the forwarded result messages.
"""

from __future__ import annotations

import contextlib
import datetime
import re
from dataclasses import dataclass
from typing import get_args

from lxml import etree

from nitro.storage.models import ArchiveDefault, ArchivedMessage, ArchivePrefs, ArchiveQuery
from nitro.xmpp import ns
from nitro.xmpp.dataforms import Field, Form, InvalidForm, find_form, form_type_field
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.rsm import InvalidSet, PageInfo, PageRequest, find_set
from nitro.xmpp.stanza import child, element, stanza, utc_stamp

MAM = "urn:xmpp:mam:2"
FORWARD = "urn:xmpp:forward:0"  # XEP-0297
XDATA_VALIDATE = "http://jabber.org/protocol/xdata-validate"  # XEP-0122
DEFAULT_PAGE_SIZE = 50  # XEP-0313 §4.3.1: our page size when the client names none (capped by config)
MAX_PREFS_JIDS = 1000  # per list of XEP-0441 preferences

MODES: dict[str, ArchiveDefault] = {mode: mode for mode in get_args(ArchiveDefault)}
_FIELDS = frozenset({"with", "start", "end", "before-id", "after-id", "ids", "include-groupchat"})
# XEP-0082 DateTime: a time zone is mandatory, fractions of a second optional.
_DATETIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", re.ASCII)
# Archived stanzas are our own serialization; still never let parsing reach the network or expand entities.
ARCHIVED_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


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
    default = MODES.get(node.get("default") or "")
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
        forwarded.append(etree.fromstring(item.stanza, ARCHIVED_PARSER))
    return message
