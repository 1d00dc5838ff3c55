"""Result Set Management (XEP-0059 v1.0): parse a requested `<set/>`, build the answered one. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from nitro.xmpp.stanza import child, element

RSM = "http://jabber.org/protocol/rsm"
_R = f"{{{RSM}}}"


class InvalidSet(ValueError):
    """A requested `<set/>` that breaks XEP-0059 §2 (answer bad-request)."""


@dataclass(frozen=True, slots=True)
class PageRequest:
    """What a requester asked for (§2.1-§2.6); None means the element was absent."""

    max: int | None = None
    after: str | None = None  # §2.2: the page after this item's UID
    before: str | None = None  # §2.3: the page before this UID; "" (empty <before/>): the last page (§2.5)
    index: int | None = None  # §2.6: the page starting at this offset (out of order)

    @property
    def backward(self) -> bool:
        """§2.3, §2.5: a `<before/>` pages backward through the result set."""
        return self.before is not None


@dataclass(frozen=True, slots=True)
class PageInfo:
    """What a responder says about the page it returns (§2.2, §2.7)."""

    first: str | None = None
    first_index: int | None = None
    last: str | None = None
    count: int | None = None

    def to_element(self) -> etree._Element:
        """The answering `<set/>`; §2.2: an empty page has no <first/> or <last/>, only the count."""
        result = element(RSM, "set")
        if self.first is not None:
            first = child(result, RSM, "first", self.first)
            if self.first_index is not None:
                first.set("index", str(self.first_index))
        if self.last is not None:
            child(result, RSM, "last", self.last)
        if self.count is not None:
            child(result, RSM, "count", str(self.count))
        return result


def parse_set(node: etree._Element) -> PageRequest:
    """A requested `<set xmlns='http://jabber.org/protocol/rsm'/>`; raises InvalidSet."""
    if node.tag != f"{_R}set":
        raise InvalidSet("not an RSM <set/>")
    after = _single_text(node, "after")
    if after == "":
        raise InvalidSet("<after/> needs the UID of an item (XEP-0059 §2.2)")
    before = _single_text(node, "before")
    return PageRequest(
        max=_non_negative(node, "max"),
        after=after,
        before=before,
        index=_non_negative(node, "index"),
    )


def find_set(parent: etree._Element) -> PageRequest | None:
    """The RSM request among `parent`'s children, None if there is none; raises InvalidSet."""
    nodes = parent.findall(f"{_R}set")
    if len(nodes) > 1:
        raise InvalidSet("more than one RSM <set/>")
    return parse_set(nodes[0]) if nodes else None


def _single_text(node: etree._Element, name: str) -> str | None:
    found = node.findall(f"{_R}{name}")
    if not found:
        return None
    if len(found) > 1:
        raise InvalidSet(f"more than one <{name}/>")
    return (found[0].text or "").strip()


def _non_negative(node: etree._Element, name: str) -> int | None:
    text = _single_text(node, name)
    if text is None:
        return None
    # §2.1, §2.6: max and index are non-negative integers (xs:int); int() alone would take "+1", " 1", "1_0".
    if not text.isascii() or not text.isdigit():
        raise InvalidSet(f"<{name}/> must be a non-negative integer, not {text!r}")
    return int(text)
