"""Small builders for the stanzas handlers send (IQ results, namespaced children, delay stamps) and what
offline storage keeps of a message (XEP-0160)."""

from __future__ import annotations

import datetime

from lxml import etree

from nitro.xmpp import ns

CHATSTATES = "http://jabber.org/protocol/chatstates"  # XEP-0085
HINTS = "urn:xmpp:hints"  # XEP-0334
_THREAD = f"{{{ns.CLIENT}}}thread"
_NO_STORE = f"{{{HINTS}}}no-store"
# Kept stanzas are our own serialisation; still, parsing never reaches the network or expands entities.
_KEPT_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def element(namespace: str, name: str, **attrib: str) -> etree._Element:
    """`<name xmlns='namespace' …/>` with `namespace` as the default (no generated prefixes)."""
    return etree.Element(f"{{{namespace}}}{name}", attrib, nsmap=ns.default_ns(namespace))


def child(
    parent: etree._Element, namespace: str, name: str, text: str | None = None, **attrib: str
) -> etree._Element:
    """Append `<name/>` in `namespace` to `parent`; declares the namespace only where it changes."""
    parent_ns = etree.QName(parent).namespace
    nsmap = None if parent_ns == namespace else ns.default_ns(namespace)
    node = etree.SubElement(parent, f"{{{namespace}}}{name}", attrib, nsmap=nsmap)
    if text is not None:
        node.text = text
    return node


def parse_kept(data: bytes) -> etree._Element:
    """A new element from a stanza kept as `xmlwrite.self_contained` bytes (raises etree.XMLSyntaxError)."""
    return etree.fromstring(data, _KEPT_PARSER)


def iq_result(iq: etree._Element, payload: etree._Element | None = None) -> etree._Element:
    """The result for an IQ get/set (RFC 6120 §8.2.3): same id, addresses swapped."""
    result = etree.Element(f"{{{ns.CLIENT}}}iq", type="result", nsmap=ns.default_ns(ns.CLIENT))
    if (stanza_id := iq.get("id")) is not None:
        result.set("id", stanza_id)
    if (sender := iq.get("from")) is not None:
        result.set("to", sender)
    if (recipient := iq.get("to")) is not None:
        result.set("from", recipient)
    if payload is not None:
        result.append(payload)
    return result


def stanza(kind: str, **attrib: str) -> etree._Element:
    """A new `<message/>`, `<presence/>` or `<iq/>` in jabber:client; attribute `from_` sets 'from'."""
    if "from_" in attrib:
        attrib["from"] = attrib.pop("from_")
    return etree.Element(f"{{{ns.CLIENT}}}{kind}", attrib, nsmap=ns.default_ns(ns.CLIENT))


def utc_stamp(moment: datetime.datetime) -> str:
    """XEP-0082 DateTime in UTC with a 'Z' suffix."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z")


def add_delay(
    message: etree._Element, moment: datetime.datetime, from_: str, reason: str | None = None
) -> None:
    """Stamp XEP-0203 delayed delivery on a stanza."""
    delay = child(message, ns.DELAY, "delay", stamp=utc_stamp(moment))
    delay.set("from", from_)
    if reason:
        delay.text = reason


def worth_storing(message: etree._Element) -> bool:
    """XEP-0160 §3: not a message carrying only chat states (XEP-0085); XEP-0334: not one hinted `<no-store/>`
    (`<no-permanent-store/>` concerns archives only, as in ejabberd's mod_offline). Called for every message
    written to a client without stream management (nitro/c2s/read_proof.py): string tests, no QName objects.
    """
    payload = False
    only_states = True
    for node in message:
        tag = node.tag
        if not isinstance(tag, str) or tag == _THREAD:
            continue
        namespace = tag[1 : tag.index("}")] if tag[:1] == "{" else ""
        if namespace == HINTS:
            if tag == _NO_STORE:
                return False
            continue
        payload = True
        if namespace != CHATSTATES:
            only_states = False
    return not payload or not only_states
