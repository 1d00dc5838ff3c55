"""Cuts a server's XML stream into top-level elements, as bytes, without building trees (sans-IO).

A load generator reads far more stanzas than it inspects, so it only tracks element depth: every "<"
in well-formed XML starts markup (text and attribute values escape it), and a tag ends at the first
">" outside quotes. What it looks into, it reads with small regular expressions on one element.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# One piece of markup: a comment, CDATA, a processing instruction, or a start/end/empty tag whose
# attribute values may hold ">" (XML 1.0 §3.1). Group 1: "/" of an end tag, 2: the name, 3: "/" of "/>".
_MARKUP = re.compile(
    rb"""<(?:!--.*?-->|!\[CDATA\[.*?\]\]>|\?.*?\?>|(/)?([^\s/>!?]+)(?:[^>"']|"[^"]*"|'[^']*')*?(/)?>)""",
    re.DOTALL,
)
MAX_PENDING = 4 * 1024 * 1024  # bytes of one unfinished element before we call the stream broken


class StreamSyntaxError(Exception):
    """The server sent something that is not an XMPP stream (the server's fault)."""


@dataclass(frozen=True, slots=True)
class StreamOpened:
    header: bytes  # the whole <stream:stream …> start tag


@dataclass(frozen=True, slots=True)
class Element:
    name: bytes  # qualified name as sent, e.g. b"message", b"stream:features"
    raw: bytes  # the complete element


@dataclass(frozen=True, slots=True)
class StreamClosed:
    pass


SplitEvent = StreamOpened | Element | StreamClosed


class Splitter:
    """Feed bytes, get the stream header, each complete depth-1 element, and the stream end."""

    def __init__(self) -> None:
        self._buffer = b""
        self._scan = 0  # where scanning resumes in _buffer (markup before it is already counted)
        self._depth = 0
        self._start = 0  # offset of the current depth-1 element in _buffer
        self._name = b""
        self.closed = False

    def feed(self, data: bytes) -> list[SplitEvent]:
        if self.closed:
            return []
        buffer = self._buffer + data if self._buffer else data
        events: list[SplitEvent] = []
        pos, depth, start, name = self._scan, self._depth, self._start, self._name
        find, match = buffer.find, _MARKUP.match
        while (lt := find(b"<", pos)) >= 0:
            markup = match(buffer, lt)
            if markup is None:
                break  # an unfinished tag: wait for more bytes
            pos = markup.end()
            tag = markup.group(2)
            if tag is None:  # comment, CDATA or PI: part of an element, or the XML declaration
                if depth == 0 and buffer[lt + 1 : lt + 2] != b"?":
                    raise StreamSyntaxError("comment or CDATA outside the stream element")
                continue
            if markup.group(1):  # end tag
                depth -= 1
                if depth == 1:
                    events.append(Element(name, buffer[start:pos]))
                elif depth == 0:
                    events.append(StreamClosed())
                    self.closed = True
                    break
                elif depth < 0:
                    raise StreamSyntaxError("end tag without a start tag")
            elif markup.group(3):  # empty-element tag
                if depth == 1:
                    events.append(Element(tag, buffer[lt:pos]))
                elif depth == 0:
                    raise StreamSyntaxError("the stream element is empty")
            else:
                if depth == 0:
                    if tag != b"stream:stream":
                        raise StreamSyntaxError(
                            f"expected <stream:stream>, got <{tag.decode(errors='replace')}>"
                        )
                    events.append(StreamOpened(buffer[lt:pos]))
                elif depth == 1:
                    start, name = lt, tag
                depth += 1
        if depth >= 2:
            keep = start  # inside an element: keep it whole
        else:
            keep = find(b"<", pos)  # between elements only an unfinished tag matters, not whitespace
            keep = len(buffer) if keep < 0 else keep
        self._buffer = buffer[keep:]
        if len(self._buffer) > MAX_PENDING:
            raise StreamSyntaxError(f"an element larger than {MAX_PENDING} bytes, or no end of tag")
        self._scan, self._start = max(0, pos - keep), start - keep
        self._depth, self._name = depth, name
        return events

    def reset(self) -> None:
        """A stream restart (RFC 6120 §4.3.3): forget everything, expect a new header."""
        self._buffer, self._scan, self._depth, self._start, self._name = b"", 0, 0, 0, b""
        self.closed = False
