"""xmlwrite.Addressable: the bytes patched for a copy's 'to' are exactly what serialising the copy writes,
whatever the presence and the JID hold; `written_as` hands them to `serialize` for that element only."""

from __future__ import annotations

import copy

import pytest
from lxml import etree

from nitro.modules.presence_copies import addressed
from nitro.xmpp.stanza import parse_kept, stanza
from nitro.xmpp.xmlwrite import Addressable, in_stream, self_contained, serialize, written_as

_PARSED = b"""<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>
<presence from='alice@localhost/phone' xml:lang='en'><show>away</show><status>out &amp; about &gt; there
</status><priority>5</priority><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n&quot;&lt;'
ver='v='/></presence><presence from='bob@localhost/x'/></stream:stream>"""


def _presences() -> list[etree._Element]:
    root = etree.fromstring(_PARSED)
    parsed = [copy.deepcopy(child) for child in root]  # as Presence keeps them: copies of the parsed stanza
    built = stanza("presence", type="unavailable", from_="carol@localhost/tablet")  # without an nsmap
    with_text = stanza("presence", from_="dave@localhost/é")
    etree.SubElement(with_text, "{jabber:client}status").text = "ü <>&\"'"
    return [*parsed, built, with_text]


_JIDS = [
    "bob@localhost",
    "bob@localhost/laptop",
    "bob@localhost/a\"b<c>d&e'f\tg\nh\ri",
    "ünïcode@localhost/résource ☃",
    "component.localhost",
]


@pytest.mark.parametrize("jid", _JIDS)
def test_patched_bytes_are_the_copys_serialisation(jid: str) -> None:
    for presence in _presences():
        assert Addressable.of(presence).to(jid) == serialize(addressed(presence, jid))


def _invented() -> etree._Element:
    """Built from Clark names without an nsmap: lxml writes it with invented prefixes (ns0:presence)."""
    presence = etree.Element("{jabber:client}presence", {"from": "erin@localhost/r"})
    etree.SubElement(presence, "{urn:example:x}x").text = "y"
    return presence


@pytest.mark.parametrize("jid", _JIDS)
def test_a_kept_presence_reads_back_and_patches_to_what_its_copy_writes(jid: str) -> None:
    for presence in [*_presences(), _invented()]:
        kept = self_contained(presence)
        assert in_stream(kept) == serialize(presence)
        assert b"ns0" not in kept
        element = parse_kept(kept)
        assert self_contained(element) == kept  # read back, it is kept the same
        assert Addressable(in_stream(kept)).to(jid) == serialize(addressed(element, jid))


def test_in_stream_drops_only_a_stanzas_own_client_declaration() -> None:
    assert in_stream(b'<message xmlns="jabber:client" to="a"/>') == b'<message to="a"/>'
    assert in_stream(b'<iq xmlns="jabber:client"/>') == b"<iq/>"
    assert in_stream(b'<presence xmlns="jabber:client">x</presence>') == b"<presence>x</presence>"
    kept = [
        b'<x:presence xmlns:x="jabber:client"/>',  # a prefix: its declaration is needed
        b'<query xmlns="jabber:client"/>',  # not a stanza
        b'<presence xmlns="urn:other"/>',
        b'<presence from="a" xmlns="jabber:client"/>',  # not the first attribute, as lxml never writes it
    ]
    for data in kept:
        assert in_stream(data) == data


def test_written_as_stands_for_that_element_only_and_only_while_set() -> None:
    presence = _presences()[0]
    sent, other = addressed(presence, "bob@localhost"), addressed(presence, "carol@localhost")
    written_as.set(sent, b"<known/>")
    try:
        assert serialize(sent) == b"<known/>"
        assert b'to="carol@localhost"' in serialize(other)
        assert serialize(sent, standalone=True) != b"<known/>"  # WebSocket and BOSH frames: written whole
    finally:
        written_as.clear()
    assert serialize(sent) != b"<known/>"
