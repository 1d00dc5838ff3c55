"""One content namespace inside: stanzas from `jabber:server` and `jabber:component:accept` streams become
`jabber:client` for the router (RFC 6120 §4.8.2, XEP-0114 §3), and go back to the stream's own on the way out.
"""

from __future__ import annotations

import copy

from lxml import etree

from nitro.xmpp import ns

INTERNAL = ns.CLIENT
CONTENT_NAMESPACES = frozenset({ns.CLIENT, ns.SERVER, ns.COMPONENT})


def to_internal(element: etree._Element, stream_ns: str) -> etree._Element:
    """`element` as read from a `stream_ns` stream, with its content namespace turned into jabber:client.

    Never mutates `element`: returns it unchanged when there is nothing to rename, otherwise a new tree.
    """
    return _renamed(element, _checked(stream_ns), INTERNAL)


def to_external(element: etree._Element, stream_ns: str) -> etree._Element:
    """An internal (jabber:client) stanza as a `stream_ns` stream writes it; the inverse of `to_internal`."""
    return _renamed(element, INTERNAL, _checked(stream_ns))


def _checked(stream_ns: str) -> str:
    if stream_ns not in CONTENT_NAMESPACES:
        raise ValueError(f"{stream_ns!r} is not a stanza content namespace")
    return stream_ns


def _renamed(element: etree._Element, old: str, new: str) -> etree._Element:
    """Rename the elements in `old` that are reached from the top through `old` elements only.

    That is the stanza and its direct content (body, subject, thread, show, status, priority, error); a
    stanza wrapped in another namespace (XEP-0297 forwarded, carbons, MAM results) declares its own
    content namespace, jabber:client, and keeps it, as Prosody does.
    """
    if old == new or etree.QName(element).namespace != old:
        return element
    nsmap = {prefix: new if uri == old else uri for prefix, uri in element.nsmap.items()}
    top = etree.Element(_tag(element, new), nsmap=nsmap)  # type: ignore[arg-type]
    _copy_attributes(element, top)
    top.text = element.text
    _copy_children(element, top, old, new)
    return top


def _copy_children(source: etree._Element, target: etree._Element, old: str, new: str) -> None:
    for node in source:
        if isinstance(node.tag, str) and etree.QName(node).namespace == old:
            parent_nsmap = source.nsmap
            declared = {
                prefix: new if uri == old else uri
                for prefix, uri in node.nsmap.items()
                if parent_nsmap.get(prefix) != uri
            }
            copied = etree.SubElement(target, _tag(node, new), nsmap=declared or None)  # type: ignore[arg-type]
            _copy_attributes(node, copied)
            copied.text = node.text
            _copy_children(node, copied, old, new)
        else:
            copied = copy.deepcopy(node)  # foreign content (and comments) as they are
            target.append(copied)
        copied.tail = node.tail


def _copy_attributes(source: etree._Element, target: etree._Element) -> None:
    for name, value in source.items():
        target.set(name, value)


def _tag(element: etree._Element, namespace: str) -> str:
    return f"{{{namespace}}}{etree.QName(element).localname}"
