"""RFC 7395 framing, sans-IO: one WebSocket text message in, one stream event out; elements in, messages out.

Each message is a document of its own (§3.3.1), parsed in one call and held to the XML stream's rules:
no DTD, entity, comment or processing instruction (RFC 6120 §11.1), the stanza size and depth limits.
"""

from __future__ import annotations

import re
from typing import Final

from lxml import etree

from nitro.xmpp import ns
from nitro.xmpp.errors import StreamError, logged_error
from nitro.xmpp.xmlstream import (
    StanzaReceived,
    StreamClosed,
    StreamEvent,
    StreamOpened,
)
from nitro.xmpp.xmlwrite import attributes, serialize

__all__ = ["CLOSE", "FrameParser", "frame", "open_message"]

_OPEN: Final = f"{{{ns.FRAMING}}}open"
_CLOSE: Final = f"{{{ns.FRAMING}}}close"
_XML_LANG: Final = f"{{{ns.XML}}}lang"
_XML_DECLARATION: Final = re.compile(rb"<\?xml\s[^?>]*\?>")
_ENCODING: Final = re.compile(rb"""encoding\s*=\s*["']([^"']*)["']""")
_ROOT_NAME: Final = re.compile(rb"<[^\s/>]+")
_JABBER_CLIENT: Final = f" xmlns='{ns.CLIENT}'".encode()
_WHITESPACE: Final = b" \t\r\n"
_ONE_ELEMENT: Final = "a WebSocket message must hold exactly one complete element (RFC 7395 §3.3.1)"
_NOT_ALLOWED: Final = (etree.Comment, etree.ProcessingInstruction, etree.Entity)
# One parser for every message (parsing keeps no state from one document to the next); entities are never
# resolved, nothing is fetched, and libxml2's own size limits stay on (huge_tree off).
_PARSER: Final = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, collect_ids=False
)

CLOSE: Final = f"<close xmlns='{ns.FRAMING}'/>".encode()  # RFC 7395 §3.6; see-other-uri is not used


class FrameParser:
    """Turns each WebSocket text message into one `StreamEvent` (RFC 7395 §3.3); raises `StreamError`.

    `<open/>` becomes `StreamOpened` (the content namespace is jabber:client, §3.3.2), `<close/>` becomes
    `StreamClosed` (§3.6), any other element `StanzaReceived`. A message that is not exactly one complete
    element is `<not-well-formed/>` (§3.3.1); one over `max_stanza_bytes` is `<policy-violation/>`.
    An element without a namespace declaration is read as jabber:client, as it would be on a TCP stream.
    """

    __slots__ = ("_max_depth", "_max_stanza_bytes")

    def __init__(self, *, max_stanza_bytes: int = 262144, max_depth: int = 64) -> None:
        self._max_stanza_bytes = max_stanza_bytes
        self._max_depth = max_depth

    def parse(self, data: bytes) -> StreamEvent | None:
        """The event one message carries; None for a message of whitespace only (ignored, as between
        stanzas on TCP)."""
        if len(data) > self._max_stanza_bytes:
            raise StreamError("policy-violation", f"message larger than {self._max_stanza_bytes} bytes")
        data = data.strip(_WHITESPACE)
        if not data:
            return None
        if data.startswith(b"<?xml"):
            data = _without_declaration(data)
        if data.startswith((b"<!", b"<?")):  # RFC 6120 §11.1: no DTD (hence no entity declarations)
            raise StreamError("restricted-xml", "a DTD, comment or processing instruction in a message")
        root = _parse(data)
        if root.tag[0] != "{" and None not in root.nsmap:  # undeclared: jabber:client, as on a TCP stream
            name = _ROOT_NAME.match(data)
            assert name is not None
            root = _parse(data[: name.end()] + _JABBER_CLIENT + data[name.end() :])
        if data.count(b"<") > self._max_depth and _depth(root) > self._max_depth:
            raise StreamError("policy-violation", f"elements nested deeper than {self._max_depth}")
        return _event(root)


def _parse(data: bytes) -> etree._Element:
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as error:
        found = logged_error(_PARSER.error_log)
        if found is None or found.condition == "not-well-formed":
            found = StreamError("not-well-formed", _ONE_ELEMENT)
        raise found from error
    if (found := logged_error(_PARSER.error_log)) is not None:
        raise found
    if (
        root.getprevious() is not None
        or root.getnext() is not None
        or next(root.iter(*_NOT_ALLOWED), None) is not None
    ):
        raise StreamError("restricted-xml", "an entity reference, comment or processing instruction")
    return root


def _depth(root: etree._Element) -> int:
    deepest = depth = 0
    for event, _element in etree.iterwalk(root, events=("start", "end")):
        depth += 1 if event == "start" else -1
        deepest = max(deepest, depth)
    return deepest


def _without_declaration(data: bytes) -> bytes:
    """A message may begin with an XML declaration, as any document may; it must not claim another
    encoding than UTF-8 (RFC 6120 §11.6)."""
    declaration = _XML_DECLARATION.match(data)
    if declaration is None:
        raise StreamError("not-well-formed", "a malformed XML declaration")
    encoding = _ENCODING.search(declaration[0])
    if encoding is not None and encoding[1].lower() not in (b"utf-8", b"utf8"):
        raise StreamError("unsupported-encoding", "WebSocket messages are UTF-8 (RFC 7395 §3.2)")
    return data[declaration.end() :].lstrip(_WHITESPACE)


def _event(element: etree._Element) -> StreamEvent:
    if element.tag == _OPEN:
        return StreamOpened(
            to=element.get("to"),
            from_=element.get("from"),
            version=element.get("version"),
            lang=element.get(_XML_LANG),
            id=element.get("id"),
            content_ns=ns.CLIENT,
        )
    if element.tag == _CLOSE:
        return StreamClosed()
    return StanzaReceived(element)


def open_message(
    *, from_: str, id: str | None, to: str | None = None, lang: str = "en", version: str | None = "1.0"
) -> bytes:
    """Our `<open/>` (RFC 7395 §3.4): from, id, version and xml:lang; 'to' when the client said who it is."""
    rendered = attributes({"from": from_, "to": to, "id": id, "version": version, "xml:lang": lang})
    return f"<open xmlns='{ns.FRAMING}'{rendered}/>".encode()


def frame(element: etree._Element) -> bytes:
    """One element as a message of its own: it declares its namespaces (jabber:client for a stanza the server
    built without one, the streams prefix on `<stream:features/>` and `<stream:error/>`)."""
    return serialize(element, standalone=True)
