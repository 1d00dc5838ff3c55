"""Message Archive Management on a room JID (XEP-0313 §4, §5 with XEP-0059 paging): the query and the
stanzas that answer it; the rows come from store.MucStore.query."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from xml.etree.ElementTree import Element, fromstring

from plugins.muc.history import Entry
from plugins.muc.xml import DATA, DELAY, FORWARD, MAM, RSM, StanzaError, make, q, sub

CLIENT = "jabber:client"


@dataclass(frozen=True, slots=True)
class MamQuery:
    query_id: str | None
    start: float | None
    end: float | None
    after: str | None
    before: str | None
    last_page: bool
    limit: int


def _stamp(var: str, text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise StanzaError("bad-request", f"{var}: not an XEP-0082 date-time") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def parse_query(query: Element, *, default_limit: int, max_limit: int) -> MamQuery:
    fields: dict[str, str] = {}
    form = query.find(q("x", DATA))
    if form is not None:
        for field in form.findall(q("field", DATA)):
            var = field.get("var")
            if var:
                fields[var] = field.findtext(q("value", DATA)) or ""
        if fields.get("FORM_TYPE", MAM) != MAM:
            raise StanzaError("bad-request", "FORM_TYPE is not urn:xmpp:mam:2")
    start = _stamp("start", fields["start"]) if fields.get("start") else None
    end = _stamp("end", fields["end"]) if fields.get("end") else None
    after = fields.get("after-id") or None
    before = fields.get("before-id") or None
    last_page = False
    limit = default_limit
    rsm = query.find(q("set", RSM))
    if rsm is not None:
        text = rsm.findtext(q("max", RSM))
        if text is not None:
            if not text.strip().isdigit():
                raise StanzaError("bad-request", "RSM max is not a number")
            limit = int(text)
        rsm_after = rsm.find(q("after", RSM))
        if rsm_after is not None:
            after = rsm_after.text or None
        rsm_before = rsm.find(q("before", RSM))
        if rsm_before is not None:
            if rsm_before.text:
                before = rsm_before.text
            else:
                last_page = True  # XEP-0059 §2.5: an empty <before/> asks for the last page
    return MamQuery(query.get("queryid"), start, end, after, before, last_page, min(limit, max_limit))


def result_message(room: str, query_id: str | None, entry: Entry) -> Element:
    """XEP-0313 §5.1.2: one archived message, forwarded with its delay."""
    message = make(q("message"), {"from": room})
    result = sub(message, q("result", MAM), {"id": entry.stanza_id})
    if query_id is not None:
        result.set("queryid", query_id)
    forwarded = sub(result, q("forwarded", FORWARD))
    stamp = datetime.fromtimestamp(entry.stamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    sub(forwarded, q("delay", DELAY), {"stamp": stamp})
    forwarded.append(fromstring(entry.xml))  # noqa: S314 (our own archive rows, written by ElementTree)
    return message


def fin(entries: list[Entry], complete: bool) -> Element:
    """XEP-0313 §5.1.3: the IQ result's <fin/> with the page's first and last ids."""
    done = make(q("fin", MAM))
    if complete:
        done.set("complete", "true")
    page = sub(done, q("set", RSM))
    if entries:
        sub(page, q("first", RSM), text=entries[0].stanza_id)
        sub(page, q("last", RSM), text=entries[-1].stanza_id)
    return done


def fields_form() -> Element:
    """XEP-0313 §6.1: the fields a query may use."""
    query = make(q("query", MAM))
    form = sub(query, q("x", DATA), {"type": "form"})
    sub(sub(form, q("field", DATA), {"var": "FORM_TYPE", "type": "hidden"}), q("value", DATA), text=MAM)
    for var in ("start", "end", "after-id", "before-id"):
        sub(form, q("field", DATA), {"var": var, "type": "text-single"})
    return query
