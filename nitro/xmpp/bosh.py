"""BOSH wire format (XEP-0124, XEP-0206): request `<body/>` wrappers parsed from bytes under the restricted
XML rules of RFC 6120 §11, the terminal binding conditions, and our response bodies as bytes. No I/O.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from lxml import etree

from nitro.xmpp import ns
from nitro.xmpp.xmlwrite import serialize

HTTPBIND: Final = "http://jabber.org/protocol/httpbind"
XBOSH: Final = "urn:xmpp:xbosh"
BOSH_VERSION: Final = (1, 11)  # the XEP-0124 version we implement
MAX_RID: Final = 2**53 - 1  # XEP-0124 §14.1

# XEP-0124 §17.2: the terminal binding conditions.
Condition = Literal[
    "bad-request",
    "host-gone",
    "host-unknown",
    "improper-addressing",
    "internal-server-error",
    "item-not-found",
    "other-request",
    "policy-violation",
    "remote-connection-failed",
    "remote-stream-error",
    "see-other-uri",
    "system-shutdown",
    "undefined-condition",
]
# §17.1: what a legacy client (no 'ver' in its session creation request) gets instead, as an HTTP status.
LEGACY_STATUS: Final[Mapping[str, int]] = {"bad-request": 400, "policy-violation": 403, "item-not-found": 404}

_BODY: Final = f"{{{HTTPBIND}}}body"
_XML_LANG: Final = f"{{{ns.XML}}}lang"
_SPACE: Final = " \t\r\n"
_SLICE: Final = 4096  # lxml is fed this much at once: the stanza limit is exact to about two slices
_MARKUP: Final = re.compile(rb"<(.)", re.DOTALL)
_ENCODING_DECL: Final = re.compile(rb"(?:\xef\xbb\xbf)?<\?xml\s[^?]*?encoding\s*=\s*[\"']([^\"']*)[\"']")
_STANZAS: Final = frozenset(("message", "presence", "iq"))
_ESCAPES: Final = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;"})


class BoshError(Exception):
    """A request the binding refuses; `condition` is the terminal binding condition to answer with."""

    def __init__(self, condition: Condition, text: str = "") -> None:
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition: Condition = condition
        self.text = text
        self.sid: str | None = None  # the session the bad request named, if it got that far


@dataclass(frozen=True, slots=True)
class Body:
    """One client request: its `<body/>` attributes (Clark names for qualified ones) and its payloads,
    each a standalone tree in the `jabber:client` namespace if it came unqualified (XEP-0206 §3 note)."""

    rid: int
    sid: str | None
    attrs: Mapping[str, str]
    payloads: tuple[etree._Element, ...]

    def get(self, name: str) -> str | None:
        return self.attrs.get(name)

    @property
    def terminate(self) -> bool:
        return self.attrs.get("type") == "terminate"

    @property
    def restart(self) -> bool:
        """XEP-0206 §5: `xmpp:restart='true'` asks for a new stream after SASL success."""
        return self.attrs.get(f"{{{XBOSH}}}restart") in ("true", "1")

    def number(self, name: str, *, maximum: int = 2**31) -> int | None:
        """A non-negative integer attribute (wait, hold, pause, ack); bad-request if it is not one."""
        return _number(self.attrs.get(name), name, maximum)


def _number(text: str | None, name: str, maximum: int) -> int | None:
    if text is None:
        return None
    value = text.strip(_SPACE)
    if not (value.isascii() and value.isdigit()) or int(value) > maximum:
        raise BoshError("bad-request", f"'{name}' must be an integer from 0 to {maximum}")
    return int(value)


def parse_version(text: str | None) -> tuple[int, int] | None:
    """'ver' is "<major>.<minor>", each an integer (XEP-0124 §7.1); None if absent or unreadable."""
    if text is None:
        return None
    major, dot, minor = text.strip(_SPACE).partition(".")
    if not dot or not (major.isascii() and major.isdigit() and minor.isascii() and minor.isdigit()):
        return None
    return int(major), int(minor)


def parse_body(data: bytes, *, max_stanza_bytes: int, max_depth: int = 64) -> Body:
    """Parse one request; raises BoshError("bad-request") for anything that is not a well-formed `<body/>`
    of restricted XML (XEP-0124 §6: no comments, PIs, DTDs or entity references; no character data), and
    BoshError("policy-violation") for a payload over `max_stanza_bytes` or nested deeper than `max_depth`.
    """
    _check_prolog(data)
    parser = etree.XMLPullParser(
        events=("start", "end", "comment", "pi"),
        encoding="utf-8",
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        remove_blank_text=False,
    )
    root: etree._Element | None = None
    payloads: list[etree._Element] = []
    depth = 0
    pending = 0  # bytes fed since the last payload was complete
    closed = False
    try:
        for offset in range(0, len(data), _SLICE):
            chunk = data[offset : offset + _SLICE]
            pending += len(chunk)
            _feed(parser, chunk)
            for event, element in parser.read_events():
                if closed or event in ("comment", "pi"):
                    raise BoshError("bad-request", "comments, processing instructions or data after the body")
                assert isinstance(element, etree._Element)
                if event == "start":
                    depth += 1
                    if depth == 1:
                        root = _check_root(element)
                    elif depth - 1 > max_depth:
                        raise BoshError("policy-violation", f"elements nested deeper than {max_depth}")
                else:
                    depth -= 1
                    if depth == 1:
                        payloads.append(element)
                        pending = 0
                    elif depth == 0:
                        closed = True
            if pending > max_stanza_bytes:
                raise BoshError("policy-violation", f"a payload larger than {max_stanza_bytes} bytes")
        try:
            parser.close()
        except etree.XMLSyntaxError as error:
            raise BoshError("bad-request", f"not well-formed: {error}") from error
        if root is None or not closed:
            raise BoshError("bad-request", "no complete <body/> element")
        return _body(root, payloads)
    except BoshError as error:
        error.sid = root.get("sid") if root is not None else None
        raise


def _check_prolog(data: bytes) -> None:
    """Refuse a DTD (hence entity declarations) and encodings other than UTF-8 before lxml sees them."""
    if data.startswith((b"\xfe\xff", b"\xff\xfe")) or b"\x00" in data[:4]:
        raise BoshError("bad-request", "the body is not UTF-8")
    for markup in _MARKUP.finditer(data):
        if markup[1] == b"!":
            raise BoshError("bad-request", "a DTD or comment before the body")
        if markup[1] != b"?":
            declared = _ENCODING_DECL.match(data, 0, markup.start())
            if declared and declared[1].lower() not in (b"utf-8", b"utf8"):
                raise BoshError("bad-request", "the body is not UTF-8")
            return


def _feed(parser: etree.XMLPullParser, chunk: bytes) -> None:
    # Undeclared entities and unbound prefixes are only logged by lxml; its later events are garbage.
    try:
        parser.feed(chunk)
    except etree.XMLSyntaxError as error:
        raise BoshError("bad-request", f"not well-formed: {error}") from error
    for entry in parser.feed_error_log:
        if entry.level > etree.ErrorLevels.WARNING or "ENTITY" in entry.type_name:
            raise BoshError("bad-request", f"not well-formed: {entry.message}")


def _check_root(root: etree._Element) -> etree._Element:
    if root.tag != _BODY:
        raise BoshError("bad-request", f"the request is {root.tag}, not <body xmlns='{HTTPBIND}'/>")
    return root


def _body(root: etree._Element, children: list[etree._Element]) -> Body:
    if next(root.iter(etree.Entity, etree.Comment, etree.ProcessingInstruction), None) is not None:
        raise BoshError("bad-request", "entity references are not allowed (XEP-0124 §6)")
    if (root.text or "").strip(_SPACE) or any((child.tail or "").strip(_SPACE) for child in children):
        raise BoshError("bad-request", "character data in <body/> (XEP-0124 §6)")
    attrs = {str(name): str(value) for name, value in root.attrib.items()}
    rid = _number(attrs.get("rid"), "rid", MAX_RID)
    if rid is None or rid == 0:
        raise BoshError("bad-request", "every request needs a positive 'rid' (XEP-0124 §6)")
    return Body(rid, attrs.get("sid"), attrs, tuple(_standalone(child) for child in children))


def _standalone(element: etree._Element) -> etree._Element:
    """A payload as its own tree; unqualified stanzas (in the body's namespace) move to jabber:client."""
    if etree.QName(element).namespace == HTTPBIND:
        return _requalified(element, None)
    return copy.deepcopy(element)


def _requalified(element: etree._Element, parent: etree._Element | None) -> etree._Element:
    name = etree.QName(element)
    namespace = ns.CLIENT if name.namespace == HTTPBIND else name.namespace
    tag = f"{{{namespace}}}{name.localname}" if namespace else name.localname
    nsmap: Any = ns.default_ns(ns.CLIENT) if parent is None else None
    rebuilt = (
        etree.Element(tag, nsmap=nsmap) if parent is None else etree.SubElement(parent, tag, nsmap=nsmap)
    )
    rebuilt.attrib.update(element.attrib)
    rebuilt.text = element.text
    rebuilt.tail = element.tail if parent is not None else None
    for child in element.iterchildren(etree.Element):
        _requalified(child, rebuilt)
    return rebuilt


# -- bodies out --------------------------------------------------------------------------------------


def payload(element: etree._Element) -> bytes:
    """One element for a response body: stanzas declare jabber:client, since the body's default namespace is
    httpbind (XEP-0206 §3); `stream:` is declared on the body itself."""
    data = serialize(element)
    name = etree.QName(element)
    if name.namespace == ns.CLIENT and name.localname in _STANZAS:
        start = b"<" + name.localname.encode()
        declared = start + b' xmlns="jabber:client"'
        bare = data.startswith(start) and data[len(start) : len(start) + 1] in (b" ", b">", b"/")
        if bare and not data.startswith(declared):
            data = declared + data[len(start) :]
    return data


def body(attrs: Iterable[tuple[str, str]] = (), payloads: Iterable[bytes] = ()) -> bytes:
    """A response `<body/>` with its attributes (prefix `xmpp:` for XEP-0206 ones) and serialised payloads."""
    rendered = "".join(f" {name}='{value.translate(_ESCAPES)}'" for name, value in attrs)
    head = f"<body xmlns='{HTTPBIND}' xmlns:stream='{ns.STREAM}'{rendered}".encode()
    content = b"".join(payloads)
    return head + b">" + content + b"</body>" if content else head + b"/>"


def terminal(
    condition: Condition | None, payloads: Iterable[bytes] = (), attrs: Iterable[tuple[str, str]] = ()
) -> bytes:
    """A terminal binding error (XEP-0124 §17.2), or a plain `type='terminate'` when condition is None."""
    head = [("type", "terminate"), *([("condition", condition)] if condition else []), *attrs]
    return body(head, payloads)
