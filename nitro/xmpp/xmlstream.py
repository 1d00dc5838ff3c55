"""Sans-IO XMPP XML stream (RFC 6120 §4, §11), the reading side: bytes in, stream events out.

Wraps lxml's incremental parser and closes the holes it leaves open to a hostile peer. The writing side
(our stream header, elements out as bytes) is nitro/xmpp/xmlwrite.py.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from lxml import etree

from nitro.xmpp import ns
from nitro.xmpp.errors import StreamError, logged_error
from nitro.xmpp.xmlwrite import ATTR_ESCAPES

__all__ = [
    "NameBudget",
    "StanzaReceived",
    "StreamClosed",
    "StreamEvent",
    "StreamOpened",
    "XMLStreamParser",
]

_STREAM_TAG: Final = f"{{{ns.STREAM}}}stream"
_PRESENCE: Final = f"{{{ns.CLIENT}}}presence"
_XML_LANG: Final = f"{{{ns.XML}}}lang"
_XML_SPACE: Final = " \t\r\n"  # XML's whitespace (XML 1.0 §2.3 S), narrower than str.isspace()
_SLICE: Final = 16 * 1024  # lxml is fed at most this much at once, so size limits bite early
_MARKUP: Final = re.compile(rb"<(.)", re.DOTALL)
_ENCODING_DECL: Final = re.compile(rb"(?:\xef\xbb\xbf)?<\?xml\s[^?]*?encoding\s*=\s*[\"']([^\"']*)[\"']")
# The stream's bytes from its last '<' are kept (up to _TAIL_MAX) to tell whether input stopped between
# two top-level elements: then they are one complete end tag or empty-element tag, and whitespace.
_TAIL_MAX: Final = 4096
_EVENTS: Final = ("start", "end", "comment", "pi")
_COUNTED_EVENTS: Final = ("start-ns", *_EVENTS)  # namespace declarations name their prefix
_NAME_CHUNK: Final = 64  # characters of a name that count as one name
_ENDS_ELEMENT: Final = re.compile(
    rb"""(?:</[^\s>]+\s*>|<[^\s/>'"]+(?:\s+[^\s=/>]+\s*=\s*(?:'[^']*'|"[^"]*"))*\s*/>)[ \t\r\n]*"""
)


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer's `<stream:stream>` header arrived (RFC 6120 §4.7); the caller judges the values."""

    to: str | None
    from_: str | None
    version: str | None
    lang: str | None
    id: str | None
    content_ns: str


@dataclass(frozen=True, slots=True)
class StanzaReceived:
    """One complete top-level element, a stanza or a nonza, as a standalone tree the caller owns."""

    element: etree._Element


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """The peer sent `</stream:stream>` (RFC 6120 §4.4)."""


StreamEvent = StreamOpened | StanzaReceived | StreamClosed


class NameBudget:
    """The distinct names a stream has made lxml intern (issue 11 item 1): element and attribute local names
    and namespace prefixes, which the parser keeps in a dictionary of its thread that never shrinks. Past
    `limit`, `<policy-violation/>` (RFC 6120 §4.9.3.14, a local policy like the stanza size limit)."""

    __slots__ = ("_seen", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._seen: set[str] = set()

    def add(self, name: str) -> None:
        if name not in self._seen:
            self._seen.add(name)
            self.used += 1 + len(name) // _NAME_CHUNK
            if self.used > self.limit:
                raise StreamError(
                    "policy-violation", f"more than {self.limit} distinct XML names in this stream"
                )

    def element(self, element: etree._Element) -> None:
        add = self.add
        add(element.tag.rpartition("}")[2])
        for key in element.attrib:
            add(str(key).rpartition("}")[2])


def _let_go(parser: etree.XMLPullParser) -> None:
    """Free `parser` now rather than at the next full garbage collection.

    lxml's parser keeps the open stream element on its stack, and that element's document refers to the
    parser: a cycle, with the parser's C state (~11 KB) and what an unfinished element holds (a start tag
    of thousands of attributes: a megabyte). A session's parser lives long enough to reach the oldest
    generation, which is collected at most every few minutes (`[gc] full_interval`), so a released idle
    parser used to stay until then. Ending the parse, then reading the events that leaves, empties the
    stack and lets them all go by reference counting.
    """
    with contextlib.suppress(etree.XMLSyntaxError):
        parser.close()
    for _event in parser.read_events():
        pass


class XMLStreamParser:
    """Turns the bytes of one inbound XML stream into `StreamEvent`s; raises `StreamError` when they break it.

    Errors are final: after one, `feed` raises it again until `reset`. After `StreamClosed`, whitespace is
    ignored and anything else is not-well-formed (XML allows nothing after the root element).
    """

    # Slots, not a dict per connection (idle memory, issue 16).
    __slots__ = (
        "_content_namespaces",
        "_depth",
        "_error",
        "_max_depth",
        "_max_stanza_bytes",
        "_names",
        "_parser",
        "_pending",
        "_prolog",
        "_resume",
        "_root",
        "_tail",
        "max_names",
        "release_due",
    )

    def __init__(
        self,
        *,
        content_namespaces: frozenset[str] = frozenset({ns.CLIENT}),
        max_stanza_bytes: int = 262144,
        max_depth: int = 64,
        max_names: int | None = None,
    ) -> None:
        self._content_namespaces = content_namespaces
        self._max_stanza_bytes = max_stanza_bytes
        self._max_depth = max_depth
        # Distinct names (element and attribute local names, namespace prefixes) one stream may use, each 64
        # characters of a name counting as one more; None: no cap. Takes effect at the next `reset`.
        self.max_names = max_names
        self._parser: etree.XMLPullParser | None = None
        self.reset()

    def reset(self) -> None:
        """Drop all state and buffered bytes; expect a new stream header (RFC 6120 §5.4.3.3, §6.4.6).

        The old stream's parser is let go of at once (`let_go`): the stream before STARTTLS and the one
        before authentication last long enough in a login storm to reach the oldest generation."""
        self.let_go()
        self._names: NameBudget | None = None if self.max_names is None else NameBudget(self.max_names)
        self._parser = self._new_parser()
        self._root: etree._Element | None = None
        self._depth = 0  # open elements, the stream element included
        self._pending = 0  # bytes fed since the stream header or the last top-level element was complete
        self._prolog: bytearray | None = bytearray()  # the raw bytes until the stream element starts
        self._error: StreamError | None = None  # raised again by each later feed
        self._tail: bytes | None = b""  # the input from its last '<' on; None if longer than _TAIL_MAX
        self._resume: bytes | None = None  # while released: the stream header that recreates the parser
        self.release_due = False  # bytes came since the parser was last kept or recreated

    def _new_parser(self) -> etree.XMLPullParser:
        return etree.XMLPullParser(
            events=_COUNTED_EVENTS if self._names is not None else _EVENTS,
            encoding="utf-8",  # RFC 6120 §11.6; a declaration claiming otherwise is refused in _check_prolog
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            huge_tree=False,
            remove_blank_text=False,
        )

    def release(self) -> bool:
        """Between two top-level elements, free lxml's parser (about 11 KB) until more bytes arrive; an idle
        session then holds no parser. Mid-element nothing changes and False is returned.
        """
        self.release_due = False
        if self._resume is not None:
            return True
        if (
            self._error is not None
            or self._root is None
            or self._depth != 1
            or self._tail is None
            or not _ENDS_ELEMENT.fullmatch(self._tail)
        ):
            return False
        root = self._root
        declarations = "".join(
            f" xmlns{':' + prefix if prefix else ''}='{uri.translate(ATTR_ESCAPES)}'"
            for prefix, uri in root.nsmap.items()
        )
        name = f"{root.prefix}:stream" if root.prefix else "stream"
        self._resume = f"<{name}{declarations}>".encode()
        self._pending = 0
        self.let_go()
        return True

    def let_go(self, later: Callable[..., object] | None = None) -> None:
        """Free lxml's parser now (see `_let_go`), or by `later(_let_go, parser)` (a lane frees it on its
        thread with its next call); `reset` or `dispose` follow."""
        parser, self._parser = self._parser, None
        self._root = None
        if parser is not None and later is not None:
            later(_let_go, parser)
        elif parser is not None:
            _let_go(parser)

    def dispose(self) -> None:
        """The stream is over: free lxml's parser and the stream tree now (feeding again is an error)."""
        self.let_go()
        self._prolog = None
        self._resume = None
        # a new error: the first one's traceback holds this parser's frames, a cycle of its own
        self._error = StreamError("undefined-condition", "the stream is over")

    @property
    def released(self) -> bool:
        """Whether the lxml parser is freed (until the next bytes)."""
        return self._resume is not None

    def _recreate(self) -> None:
        """A released parser comes back inside an equivalent stream element, which emits no event."""
        assert self._resume is not None
        self._parser = self._new_parser()
        self._parser.feed(self._resume)
        for _event, element in self._parser.read_events():
            if isinstance(element, etree._Element):
                self._root = element
        self._resume = None

    def feed(self, data: bytes) -> list[StreamEvent]:
        """Parse the next bytes of the stream, split anywhere; return the events they complete, in order."""
        if self._error is not None:
            raise self._error
        try:
            if self._prolog is not None:
                self._check_prolog(data)
            elif self._resume is not None:
                self._recreate()
            if b"\x00" in data:
                # XML 1.0 §2.2: U+0000 is no Char anywhere. libxml2 refuses it in content, but in the XML
                # declaration it waits for more input, until the size limit or the negotiation timeout.
                raise StreamError("not-well-formed", "a NUL byte in the stream (XML 1.0 §2.2)")
            self._keep_tail(data)
            events: list[StreamEvent] = []
            for offset in range(0, len(data), _SLICE):
                chunk = data[offset : offset + _SLICE]
                self._pending += len(chunk)
                self._feed_lxml(chunk)
                self._read_events(events)
                if self._pending > self._max_stanza_bytes:
                    raise StreamError(
                        "policy-violation", f"stanza larger than {self._max_stanza_bytes} bytes"
                    )
        except StreamError as error:
            self._error = error
            raise
        return events

    def _keep_tail(self, data: bytes) -> None:
        self.release_due = True
        last = data.rfind(b"<")
        if last >= 0:
            self._tail = data[last:] if len(data) - last <= _TAIL_MAX else None
        elif self._tail is not None:
            self._tail = self._tail + data if len(self._tail) + len(data) <= _TAIL_MAX else None

    def _check_prolog(self, data: bytes) -> None:
        """Refuse before lxml sees it what lxml would accept ahead of the stream element."""
        assert self._prolog is not None
        scan_from = max(len(self._prolog) - 1, 0)  # a '<' may have ended the last chunk
        self._prolog += data
        if b"\x00" in self._prolog[:4] or self._prolog.startswith((b"\xfe\xff", b"\xff\xfe")):  # UTF-16/32
            raise StreamError("unsupported-encoding", "the stream is not UTF-8 (RFC 6120 §11.6)")
        for markup in _MARKUP.finditer(self._prolog, scan_from):
            if markup[1] == b"!":  # RFC 6120 §11.1: no DTD, hence no entity declarations
                raise StreamError("restricted-xml", "a DTD or comment before the stream header")
            if markup[1] != b"?":  # the stream element starts; the XML declaration, if any, is complete
                declared = _ENCODING_DECL.match(self._prolog, 0, markup.start())
                if declared and declared[1].lower() not in (b"utf-8", b"utf8"):
                    encoding = declared[1].decode("ascii", "replace")
                    raise StreamError("unsupported-encoding", f"encoding {encoding!r}; XMPP is UTF-8 (§11.6)")
                self._prolog = None
                return

    def _feed_lxml(self, chunk: bytes) -> None:
        # lxml raises for fatal errors only; some (undeclared entities, unbound prefixes) are merely logged,
        # after which its events cannot be trusted, so the log is read after every feed.
        assert self._parser is not None
        try:
            self._parser.feed(chunk)
        except etree.XMLSyntaxError as error:
            raise self._logged_error() or StreamError("not-well-formed", str(error)) from error
        if (logged := self._logged_error()) is not None:
            raise logged

    def _logged_error(self) -> StreamError | None:
        assert self._parser is not None
        return logged_error(self._parser.feed_error_log)

    def _read_events(self, events: list[StreamEvent]) -> None:
        assert self._parser is not None
        for event in self._parser.read_events():
            match event:
                case ("start", element):
                    if self._names is not None:
                        self._names.element(element)
                    self._depth += 1
                    if self._depth == 1:
                        events.append(self._open(element))
                    elif self._depth - 1 > self._max_depth:
                        raise StreamError(
                            "policy-violation", f"elements nested deeper than {self._max_depth}"
                        )
                case ("end", element):
                    self._depth -= 1
                    if self._depth == 1:
                        events.append(StanzaReceived(self._detach(element)))
                        self._pending = 0
                    elif self._depth == 0:
                        events.append(StreamClosed())
                case ("start-ns", (str() as prefix, _uri)):
                    assert self._names is not None
                    self._names.add(prefix)
                case (kind, _):  # RFC 6120 §11.1
                    found = "a processing instruction" if kind == "pi" else "a comment"
                    raise StreamError("restricted-xml", f"{found} in the stream")

    def _open(self, root: etree._Element) -> StreamOpened:
        # RFC 6120 §4.8.1: the stream element is qualified by the streams namespace, whatever its prefix
        if root.tag != _STREAM_TAG:
            raise StreamError("invalid-namespace", f"the stream element is {root.tag}, not {_STREAM_TAG}")
        content_ns = root.nsmap.get(None)
        if content_ns not in self._content_namespaces:  # RFC 6120 §4.8.2
            raise StreamError("invalid-namespace", f"content namespace {content_ns!r} is not served here")
        self._root = root
        self._pending = 0
        return StreamOpened(
            to=root.get("to"),
            from_=root.get("from"),
            version=root.get("version"),
            lang=root.get(_XML_LANG),
            id=root.get("id"),
            content_ns=content_ns,
        )

    def _detach(self, element: etree._Element) -> etree._Element:
        """Take a finished top-level element out of the stream tree, so that memory stays flat."""
        assert self._root is not None
        # With resolve_entities=False, lxml keeps references to DTD entities as nodes (RFC 6120 §11.1).
        if next(element.iter(etree.Entity, etree.Comment, etree.ProcessingInstruction), None) is not None:
            raise StreamError("restricted-xml", "entity reference, comment or processing instruction")
        for text in (self._root.text, element.tail):
            if text and text.strip(_XML_SPACE):
                raise StreamError("bad-format", "character data between stanzas")
        # Copy before removing: once out of the tree, lxml re-declares the inherited default namespace under
        # an invented prefix (ns0:message) if a descendant declares a default namespace of its own. (lxml's
        # __deepcopy__ is __copy__, a deep copy: without copy.deepcopy's memo and dispatch, ~1 µs less.)
        standalone = copy.copy(element)
        if element.tag == _PRESENCE:
            # The copy's document still refers to the stream's parser (lxml hands it on), so a presence
            # kept as the session's last one would keep the parser (some 11 KB) alive. Its content moves
            # into a fresh root that knows no parser. Other stanzas pass through; this costs ~14 us.
            namespaces: Any = standalone.nsmap  # lxml-stubs leave out the None key of a default namespace
            attributes: Any = standalone.attrib
            copied, standalone = standalone, etree.Element(standalone.tag, attributes, nsmap=namespaces)
            standalone.text = copied.text
            standalone.extend(copied)
        # libxml2 appends character data to its parent's last child if that is a text node, trusting a length
        # it cached for the node it made itself (SAX2.c xmlSAX2Text). So leave no stray text node behind: drop
        # the stream element's leading text, and remove the element together with its tail.
        self._root.text = None
        self._root.remove(element)
        return standalone
