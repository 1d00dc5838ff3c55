"""Sans-IO XMPP XML stream (RFC 6120 §4), the writing side: our stream header, elements out as bytes.

The reading side is nitro/xmpp/xmlstream.py.
"""

from __future__ import annotations

import re
from typing import Any, Final

from lxml import etree

from nitro.xmpp import ns
from nitro.xmpp.ns import default_ns

__all__ = [
    "ATTR_ESCAPES",
    "STREAM_FOOTER",
    "Addressable",
    "attributes",
    "in_stream",
    "self_contained",
    "serialize",
    "stream_header",
    "written_as",
]

STREAM_FOOTER: Final = b"</stream:stream>"

_INVENTED_PREFIX: Final = re.compile(r"ns\d+")  # what lxml names a namespace that has no prefix
ATTR_ESCAPES: Final = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        "'": "&apos;",
        '"': "&quot;",
        "\t": "&#9;",
        "\n": "&#10;",
        "\r": "&#13;",
    }
)


def attributes(values: dict[str, str | None]) -> str:
    """` name='value'` for each value that is not None, escaped for an attribute quoted with '."""
    return "".join(
        f" {name}='{value.translate(ATTR_ESCAPES)}'" for name, value in values.items() if value is not None
    )


def stream_header(
    *,
    from_: str | None,
    to: str | None,
    id: str | None,
    lang: str = "en",
    content_ns: str = ns.CLIENT,
    version: str | None = "1.0",
) -> bytes:
    """Our `<stream:stream>` header (RFC 6120 §4.7), declaration first; `version=None` omits it (§4.7.5)."""
    rendered = attributes({"from": from_, "to": to, "id": id, "version": version, "xml:lang": lang})
    return (
        f"<?xml version='1.0'?><stream:stream xmlns='{content_ns.translate(ATTR_ESCAPES)}'"
        f" xmlns:stream='{ns.STREAM}'{rendered}>"
    ).encode()


_IN_SCOPE: dict[str, tuple[bytes, ...]] = {
    **{f"{{{ns.CLIENT}}}{kind}": (b' xmlns="jabber:client"',) for kind in ("message", "presence", "iq")},
    **{
        f"{{{ns.STREAM}}}{kind}": (b' xmlns:stream="http://etherx.jabber.org/streams"',)
        for kind in ("features", "error")
    },
}


# What lxml escapes in an attribute value it writes between double quotes, and in text (libxml2's
# xmlAttrSerializeTxtContent, xmlEscapeContent): a carriage return too, which a parser would otherwise drop.
_LXML_ATTR_ESCAPES: Final = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"}
)
_LXML_TEXT_ESCAPES: Final = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTR_SPECIAL: Final = re.compile(r'[&<>"\t\n\r]')
_TEXT_SPECIAL: Final = re.compile(r"[&<>\r]")


def escape_attribute(value: str) -> str:
    """`value` as lxml writes it in an attribute quoted with " (a search first: translate costs ~1 µs)."""
    return value.translate(_LXML_ATTR_ESCAPES) if _ATTR_SPECIAL.search(value) else value


def escape_text(value: str) -> str:
    """`value` as lxml writes it as character data."""
    return value.translate(_LXML_TEXT_ESCAPES) if _TEXT_SPECIAL.search(value) else value


class WrittenAs:
    """While set, `serialize(element)` (inside a stream, not standalone) is `data` without walking the tree:
    for copies of one stanza whose bytes were made once (`Addressable`). One element at a time, on one
    thread: set it, deliver synchronously (no await), clear it (in a `finally`)."""

    __slots__ = ("data", "element")

    def __init__(self) -> None:
        self.element: etree._Element | None = None
        self.data = b""

    def set(self, element: etree._Element, data: bytes) -> None:
        self.element = element
        self.data = data

    def clear(self) -> None:
        self.element = None
        self.data = b""


written_as: Final = WrittenAs()


class Addressable:
    """A stanza without a 'to', serialised once: `to(jid)` is what `serialize` writes for a copy of it with
    'to' set to `jid` (the attribute added last, as lxml's `set` does), made by patching the bytes."""

    __slots__ = ("_head", "_tail")

    def __init__(self, data: bytes) -> None:
        """`data`: what `serialize` writes for the stanza (or `in_stream` of its `self_contained` bytes)."""
        end = data.index(b">")  # the start tag's end: lxml escapes ">" in attribute values
        if data[end - 1 : end] == b"/":
            end -= 1
        self._head = data[:end]
        self._tail = data[end:]

    @classmethod
    def of(cls, element: etree._Element) -> Addressable:
        assert element.get("to") is None
        return cls(serialize(element))

    def to(self, jid: str) -> bytes:
        return b'%s to="%s"%s' % (self._head, escape_attribute(jid).encode(), self._tail)


_CLIENT_DECLARATION: Final = b' xmlns="jabber:client"'
_CLIENT_NAMES: Final = frozenset({b"message", b"presence", b"iq"})


def self_contained(element: etree._Element) -> bytes:
    """`element` as UTF-8 XML that parses on its own (its namespaces declared, no tail, no invented prefix):
    how a stanza is kept (a session's last presence); `in_stream` of it is what `serialize` writes."""
    return _written(element)[1]


def in_stream(data: bytes) -> bytes:
    """What `serialize` writes, from `self_contained` bytes: a stanza's jabber:client declaration dropped."""
    end = data.find(b" ", 0, 64)
    if end > 0 and data.startswith(_CLIENT_DECLARATION, end) and data[1:end] in _CLIENT_NAMES:
        return data[:end] + data[end + len(_CLIENT_DECLARATION) :]
    return data


def _written(element: etree._Element) -> tuple[etree._Element, bytes]:
    """The element's bytes with every namespace declared, and the element they were written from."""
    data = etree.tostring(element, encoding="utf-8", xml_declaration=False, with_tail=False)
    # An invented prefix is declared as xmlns:ns0="…"; one search of the bytes spares the tree walk.
    return _without_invented_prefixes(element, data) if b"xmlns:ns" in data else (element, data)


def _without_invented_prefixes(element: etree._Element, data: bytes) -> tuple[etree._Element, bytes]:
    if any(_INVENTED_PREFIX.fullmatch(node.prefix or "") for node in element.iter(etree.Element)):
        element = _with_default_namespaces(element, None)
        data = etree.tostring(element, encoding="utf-8", xml_declaration=False, with_tail=False)
    return element, data


def serialize(element: etree._Element, *, standalone: bool = False) -> bytes:
    """One element as UTF-8 bytes to write inside an open stream: no XML declaration, no tail.

    An element built from a Clark name without an nsmap makes lxml invent a prefix (`<ns0:message>`), which
    many XMPP clients mishandle; such trees are written with default namespace declarations instead.
    `standalone`: the element must parse on its own (an RFC 7395 §3.3.1 WebSocket message, a stanza in a
    BOSH body): it keeps its declarations, and an element built without a namespace, which inherits the
    stream's on TCP, declares jabber:client.
    """
    if written_as.element is element and not standalone:
        return written_as.data
    data = etree.tostring(element, encoding="utf-8", xml_declaration=False, with_tail=False)
    if b"xmlns:ns" in data:
        element, data = _without_invented_prefixes(element, data)
    if standalone:
        if element.tag[0] != "{" and None not in element.nsmap:
            name_end = 1 + len(element.tag.encode())  # b"<" + the name, then a space, "/" or ">"
            data = b"%s xmlns='%s'%s" % (data[:name_end], ns.CLIENT.encode(), data[name_end:])
        return data
    # The stream header already declares these two; repeating them on every stanza is noise.
    declarations = _IN_SCOPE.get(element.tag)
    if declarations is not None:
        space = data.find(b" ", 0, 64)  # after the name: the first attribute or declaration
        for declaration in declarations:
            if space > 0 and data.startswith(declaration, space):
                data = data[:space] + data[space + len(declaration) :]
    return data


def _with_default_namespaces(element: etree._Element, parent: etree._Element | None) -> etree._Element:
    namespace = etree.QName(element).namespace
    prefix = "stream" if namespace == ns.STREAM else None
    nsmap: Any = None
    if namespace is not None and (parent is None or parent.nsmap.get(prefix) != namespace):
        nsmap = {prefix: namespace} if prefix else default_ns(namespace)
    if parent is None:
        rebuilt = etree.Element(element.tag, nsmap=nsmap)
    else:
        rebuilt = etree.SubElement(parent, element.tag, nsmap=nsmap)
        rebuilt.tail = element.tail
    rebuilt.attrib.update(element.attrib)
    rebuilt.text = element.text
    for child in element.iterchildren(etree.Element):
        _with_default_namespaces(child, rebuilt)
    return rebuilt
