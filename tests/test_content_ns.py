"""Content namespaces (RFC 6120 §4.8.2, XEP-0114): jabber:server and jabber:component:accept stanzas become
jabber:client inside and go back on the way out; wrapped stanzas keep their own namespace."""

from __future__ import annotations

import pytest
from lxml import etree

from nitro.xmpp import ns
from nitro.xmpp.content_ns import to_external, to_internal

FORWARD = "urn:xmpp:forward:0"
CARBONS = "urn:xmpp:carbons:2"

# A message from a server-to-server stream: its content, an error, and a carbon-wrapped jabber:client message.
FROM_SERVER = f"""<message xmlns='jabber:server' from='juliet@capulet.lit/balcony' to='romeo@localhost'
    type='chat' id='m1' xml:lang='en'><body>Art thou not Romeo?</body><thread>t1</thread>
  <error type='cancel'><item-not-found xmlns='{ns.STANZA_ERRORS}'/></error>
  <received xmlns='{CARBONS}'><forwarded xmlns='{FORWARD}'>
    <message xmlns='jabber:client' from='a@b/c' to='d@e'><body>inner</body></message>
  </forwarded></received><x:data xmlns:x='urn:example:x'><x:y>1</x:y></x:data>
</message>"""


def parse(text: str) -> etree._Element:
    return etree.fromstring(text)


def names(element: etree._Element) -> list[str]:
    return [node.tag for node in element.iter() if isinstance(node.tag, str)]


@pytest.mark.parametrize("stream_ns", [ns.SERVER, ns.COMPONENT])
def test_a_stanza_and_its_content_become_jabber_client(stream_ns: str) -> None:
    original = parse(FROM_SERVER.replace("jabber:server", stream_ns))

    internal = to_internal(original, stream_ns)

    assert names(internal) == [
        "{jabber:client}message",
        "{jabber:client}body",
        "{jabber:client}thread",
        "{jabber:client}error",
        f"{{{ns.STANZA_ERRORS}}}item-not-found",
        f"{{{CARBONS}}}received",
        f"{{{FORWARD}}}forwarded",
        "{jabber:client}message",  # XEP-0297: a forwarded stanza is jabber:client already
        "{jabber:client}body",
        "{urn:example:x}data",
        "{urn:example:x}y",
    ]
    assert internal.items() == original.items()  # addresses, type, id and xml:lang kept
    assert internal.findtext("{jabber:client}body") == "Art thou not Romeo?"
    assert etree.tostring(internal).startswith(b'<message xmlns="jabber:client" ')  # no generated prefixes
    assert names(original)[0] == f"{{{stream_ns}}}message"  # the argument is not touched


def test_the_way_out_is_the_inverse() -> None:
    original = parse(FROM_SERVER.replace("jabber:server", ns.COMPONENT))

    back = to_external(to_internal(original, ns.COMPONENT), ns.COMPONENT)

    assert names(back) == names(original)
    assert etree.tostring(back) == etree.tostring(original)


def test_the_wrapped_client_message_stays_jabber_client_on_the_way_out() -> None:
    internal = parse(FROM_SERVER.replace("jabber:server", ns.CLIENT))

    external = to_external(internal, ns.SERVER)

    assert external.tag == "{jabber:server}message"
    inner = external.find(f".//{{{FORWARD}}}forwarded/{{jabber:client}}message")
    assert inner is not None
    assert inner.findtext("{jabber:client}body") == "inner"


def test_a_client_stream_costs_nothing() -> None:
    stanza = parse("<iq xmlns='jabber:client' type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert to_internal(stanza, ns.CLIENT) is stanza
    assert to_external(stanza, ns.CLIENT) is stanza


def test_an_element_outside_the_content_namespace_is_left_alone() -> None:
    nonza = parse("<r xmlns='urn:xmpp:sm:3'/>")
    assert to_internal(nonza, ns.SERVER) is nonza
    assert to_external(nonza, ns.COMPONENT) is nonza


def test_a_prefixed_content_namespace_is_renamed_too() -> None:
    stanza = parse("<s:presence xmlns:s='jabber:server' from='a@b'><s:show>away</s:show></s:presence>")

    internal = to_internal(stanza, ns.SERVER)

    assert names(internal) == ["{jabber:client}presence", "{jabber:client}show"]
    assert internal.findtext("{jabber:client}show") == "away"


def test_an_unknown_stream_namespace_is_refused() -> None:
    stanza = parse("<message xmlns='jabber:client'/>")
    with pytest.raises(ValueError, match="not a stanza content namespace"):
        to_external(stanza, "urn:example:other")
