"""RFC 7395 framing, sans-IO: one WebSocket text message in, one stream event out; elements in, messages out.

Each message is parsed alone by a fresh `XMLStreamParser`, so the stream's XML restrictions (no DTD, entity,
comment or processing instruction; size and depth limits; RFC 6120 §11) hold for every message.
"""

from __future__ import annotations

import re
from typing import Final

from lxml import etree

from nitro.xmpp import ns
from nitro.xmpp.errors import StreamError
from nitro.xmpp.xmlstream import (
    STREAM_FOOTER,
    StanzaReceived,
    StreamClosed,
    StreamEvent,
    StreamOpened,
    XMLStreamParser,
    serialize,
)

__all__ = ["CLOSE", "FrameParser", "frame", "open_message"]

_OPEN: Final = f"{{{ns.FRAMING}}}open"
_CLOSE: Final = f"{{{ns.FRAMING}}}close"
_XML_LANG: Final = f"{{{ns.XML}}}lang"
# Every message is parsed inside this stream element, which emits no event of its own: an element without a
# namespace declaration reads as jabber:client there, as it would on a TCP stream.
_ENVELOPE: Final = f"<stream:stream xmlns='{ns.CLIENT}' xmlns:stream='{ns.STREAM}'>".encode()
_XML_DECLARATION: Final = re.compile(rb"<\?xml\s[^?>]*\?>")
_ENCODING: Final = re.compile(rb"""encoding\s*=\s*["']([^"']*)["']""")
_WHITESPACE: Final = b" \t\r\n"
_ATTR_ESCAPES: Final = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;"})

_ONE_ELEMENT: Final = "a WebSocket message must hold exactly one complete element (RFC 7395 §3.3.1)"

CLOSE: Final = f"<close xmlns='{ns.FRAMING}'/>".encode()  # RFC 7395 §3.6; see-other-uri is not used


class FrameParser:
    """Turns each WebSocket text message into one `StreamEvent` (RFC 7395 §3.3); raises `StreamError`.

    `<open/>` becomes `StreamOpened` (the content namespace is jabber:client, §3.3.2), `<close/>` becomes
    `StreamClosed` (§3.6), any other element `StanzaReceived`. A message that is not exactly one complete
    element is `<not-well-formed/>` (§3.3.1); one over `max_stanza_bytes` is `<policy-violation/>`.
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
        if data.startswith(b"<!"):  # RFC 6120 §11.1: no DTD, hence no entity declarations
            raise StreamError("restricted-xml", "a DTD or comment in a WebSocket message")
        parser = XMLStreamParser(max_stanza_bytes=self._max_stanza_bytes, max_depth=self._max_depth)
        try:
            events = parser.feed(_ENVELOPE + data + STREAM_FOOTER)
        except StreamError as error:
            if error.condition != "not-well-formed":
                raise
            events = []  # lxml's text would point into the envelope, not into the client's message
        match events:
            case [StreamOpened(), StanzaReceived(element), StreamClosed()]:
                return _event(element)
        raise StreamError("not-well-formed", _ONE_ELEMENT)


def _without_declaration(data: bytes) -> bytes:
    """A message may begin with an XML declaration, as any document may; it must not claim another
    encoding than UTF-8 (RFC 6120 §11.6)."""
    declaration = _XML_DECLARATION.match(data)
    if declaration is None:
        raise StreamError("not-well-formed", "a malformed XML declaration")
    encoding = _ENCODING.search(declaration[0])
    if encoding is not None and encoding[1].lower() not in (b"utf-8", b"utf8"):
        raise StreamError("unsupported-encoding", "WebSocket messages are UTF-8 (RFC 7395 §3.3.1)")
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
    attributes = {"from": from_, "to": to, "id": id, "version": version, "xml:lang": lang}
    rendered = "".join(
        f" {name}='{value.translate(_ATTR_ESCAPES)}'"
        for name, value in attributes.items()
        if value is not None
    )
    return f"<open xmlns='{ns.FRAMING}'{rendered}/>".encode()


def frame(element: etree._Element) -> bytes:
    """One element as a message of its own: it declares its namespaces (jabber:client for a stanza the server
    built without one, the streams prefix on `<stream:features/>` and `<stream:error/>`)."""
    return serialize(element, standalone=True)
