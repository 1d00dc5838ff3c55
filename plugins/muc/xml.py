"""XML helpers of the MUC plugin: namespaces, element building, stanza errors with their wire form."""

from __future__ import annotations

from xml.etree.ElementTree import Element, SubElement

from nitro.xmpp.errors import ErrorType, default_type
from nitro.xmpp.errors import StanzaCondition as Condition

STANZA = "jabber:component:accept"  # XEP-0114: stanzas of a component stream live in this namespace
MUC = "http://jabber.org/protocol/muc"
MUC_USER = MUC + "#user"
MUC_ADMIN = MUC + "#admin"
MUC_OWNER = MUC + "#owner"
MUC_REQUEST = MUC + "#request"
MUC_ROOMCONFIG = MUC + "#roomconfig"
MUC_ROOMINFO = MUC + "#roominfo"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
DATA = "jabber:x:data"
DELAY = "urn:xmpp:delay"
SID = "urn:xmpp:sid:0"
OCCUPANT_ID = "urn:xmpp:occupant-id:0"
MAM = "urn:xmpp:mam:2"
FORWARD = "urn:xmpp:forward:0"
RSM = "http://jabber.org/protocol/rsm"
PING = "urn:xmpp:ping"
CONFERENCE = "jabber:x:conference"  # XEP-0249 direct invitations
SELF_PING = "http://jabber.org/protocol/muc#self-ping-optimization"  # XEP-0410 §3.3


def q(name: str, ns: str = STANZA) -> str:
    """The Clark-notation tag `{ns}name`."""
    return f"{{{ns}}}{name}"


def make(tag: str, attrib: dict[str, str] | None = None, text: str | None = None) -> Element:
    element = Element(tag, attrib or {})
    if text is not None:
        element.text = text
    return element


def sub(parent: Element, tag: str, attrib: dict[str, str] | None = None, text: str | None = None) -> Element:
    child = SubElement(parent, tag, attrib or {})
    if text is not None:
        child.text = text
    return child


def local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class StanzaError(Exception):
    """An error the room answers with (RFC 6120 §8.3): the condition, its type and an optional text."""

    def __init__(self, condition: Condition, text: str | None = None, type: ErrorType | None = None) -> None:
        super().__init__(text or condition)
        self.condition = condition
        self.text = text
        self.type: ErrorType = type or default_type(condition)

    def element(self, by: str | None = None) -> Element:
        error = make(q("error"), {"type": self.type})
        if by:
            error.set("by", by)
        sub(error, q(self.condition, STANZAS))
        if self.text:
            sub(error, q("text", STANZAS), {"{http://www.w3.org/XML/1998/namespace}lang": "en"}, self.text)
        return error


def error_reply(stanza: Element, error: StanzaError, by: str | None = None) -> Element:
    """RFC 6120 §8.2: the stanza bounced to its sender with type="error" and its payload kept."""
    reply = make(stanza.tag, {"type": "error"})
    if (sender := stanza.get("from")) is not None:
        reply.set("to", sender)
    if (recipient := stanza.get("to")) is not None:
        reply.set("from", recipient)
    if (stanza_id := stanza.get("id")) is not None:
        reply.set("id", stanza_id)
    if local_name(stanza.tag) != "iq":
        for child in stanza:
            reply.append(child)
    reply.append(error.element(by))
    return reply


def iq_result(iq: Element, payload: Element | None = None) -> Element:
    reply = make(q("iq"), {"type": "result", "to": iq.get("from", ""), "from": iq.get("to", "")})
    if (iq_id := iq.get("id")) is not None:
        reply.set("id", iq_id)
    if payload is not None:
        reply.append(payload)
    return reply


def child_text(parent: Element, tag: str) -> str | None:
    child = parent.find(tag)
    return None if child is None else (child.text or "")


CLIENT = "jabber:client"


def renamespaced(element: Element, old: str, new: str) -> Element:
    """A deep copy of `element` whose elements in namespace `old` are in `new` (a component's stanzas
    are jabber:component:accept on its stream, but jabber:client inside <forwarded/>, XEP-0297)."""
    prefix = f"{{{old}}}"
    tag = element.tag
    if tag.startswith(prefix):
        tag = f"{{{new}}}{tag[len(prefix) :]}"
    copy = Element(tag, dict(element.attrib))
    copy.text, copy.tail = element.text, element.tail
    for child in element:
        copy.append(renamespaced(child, old, new))
    return copy
