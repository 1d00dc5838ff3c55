"""RFC 7395 framing without sockets: WebSocket messages in, stream events or stream errors out; elements in,
standalone messages out."""

from __future__ import annotations

import pytest
from lxml import etree

from nitro.xmpp import ns
from nitro.xmpp.errors import StanzaError, StreamError, error_reply
from nitro.xmpp.framing import CLOSE, FrameParser, frame, open_message
from nitro.xmpp.xmlstream import StanzaReceived, StreamClosed, StreamOpened

OPEN = b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.com' version='1.0' xml:lang='fr'/>"


def parse(data: bytes, **limits: int) -> object:
    return FrameParser(**limits).parse(data)


def refused(data: bytes, **limits: int) -> StreamError:
    with pytest.raises(StreamError) as caught:
        FrameParser(**limits).parse(data)
    assert caught.value.text, "every stream error says what was wrong"
    return caught.value


def element(data: bytes) -> etree._Element:
    event = parse(data)
    assert isinstance(event, StanzaReceived)
    return event.element


# -- what a client sends (RFC 7395 §3.3, §3.4, §3.6) --


def test_open_is_a_stream_header_in_jabber_client() -> None:
    assert parse(OPEN) == StreamOpened(
        to="example.com", from_=None, version="1.0", lang="fr", id=None, content_ns=ns.CLIENT
    )


def test_open_without_version_is_reported_as_is_for_the_stream_to_judge() -> None:
    opened = parse(b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.com'/>")
    assert isinstance(opened, StreamOpened)
    assert opened.version is None


def test_close_ends_the_stream() -> None:
    assert parse(CLOSE) == StreamClosed()
    assert parse(b'<close xmlns="urn:ietf:params:xml:ns:xmpp-framing"></close>') == StreamClosed()


def test_a_stanza_declares_jabber_client() -> None:
    message = element(b"<message xmlns='jabber:client' to='juliet@example.com'><body>hi</body></message>")
    assert message.tag == f"{{{ns.CLIENT}}}message"
    assert message.findtext(f"{{{ns.CLIENT}}}body") == "hi"


def test_an_element_without_a_namespace_reads_as_jabber_client_as_on_tcp() -> None:
    assert element(b"<presence/>").tag == f"{{{ns.CLIENT}}}presence"


def test_nonzas_keep_their_namespace() -> None:
    auth = element(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>")
    assert auth.tag == f"{{{ns.SASL}}}auth"
    assert auth.text == "AGEAYg=="
    assert element(b"<r xmlns='urn:xmpp:sm:3'/>").tag == "{urn:xmpp:sm:3}r"


def test_whitespace_around_the_element_and_whitespace_only_messages_are_ignored() -> None:
    assert element(b"\n <presence/>\r\n").tag == f"{{{ns.CLIENT}}}presence"
    assert parse(b" \n\t") is None


def test_a_leading_utf8_xml_declaration_is_allowed() -> None:
    assert element(b"<?xml version='1.0' encoding='UTF-8'?>\n<presence/>").tag == f"{{{ns.CLIENT}}}presence"
    assert (
        refused(b"<?xml version='1.0' encoding='ISO-8859-1'?><presence/>").condition == "unsupported-encoding"
    )


def test_each_message_is_parsed_afresh() -> None:
    parser = FrameParser()
    with pytest.raises(StreamError):
        parser.parse(b"<message><body>half")
    assert isinstance(parser.parse(b"<presence/>"), StanzaReceived)


# -- bad input (RFC 7395 §3.3.1; RFC 6120 §4.9.3, §11) --


@pytest.mark.parametrize(
    "data",
    [
        b"<presence/><presence/>",  # two elements
        b"<message><body>half",  # half of one
        b"<presence/><message>",  # one and a half
        b"</message>",
        b"hello",
        b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'",
        b"</stream:stream>",
        b"<presence/></stream:stream><presence>",  # trying to step out of the parser's envelope
    ],
)
def test_a_message_that_is_not_exactly_one_element_is_not_well_formed(data: bytes) -> None:
    error = refused(data)
    assert error.condition == "not-well-formed"
    assert "RFC 7395" in (error.text or "")


@pytest.mark.parametrize(
    ("data", "condition"),
    [
        (b"<!DOCTYPE m [<!ENTITY x 'y'>]><message>&x;</message>", "restricted-xml"),
        (b"<message><body>&lol;</body></message>", "restricted-xml"),
        (b"<message><!-- hidden --></message>", "restricted-xml"),
        (b"<message><?php echo 1; ?></message>", "restricted-xml"),
        (b"<!-- before --><presence/>", "restricted-xml"),
        (b"<presence/>trailing text", "not-well-formed"),
        (b"<message><p:body/></message>", "bad-namespace-prefix"),
    ],
)
def test_restricted_xml_is_refused_in_every_message(data: bytes, condition: str) -> None:
    assert refused(data).condition == condition


def test_a_message_over_the_stanza_limit_is_a_policy_violation() -> None:
    big = b"<message><body>" + b"x" * 20_000 + b"</body></message>"
    assert refused(big, max_stanza_bytes=10_000).condition == "policy-violation"
    assert isinstance(parse(big, max_stanza_bytes=30_000), StanzaReceived)


def test_nesting_deeper_than_the_limit_is_a_policy_violation() -> None:
    deep = b"<message>" + b"<x>" * 10 + b"</x>" * 10 + b"</message>"
    assert refused(deep, max_depth=5).condition == "policy-violation"


# -- what the server sends (RFC 7395 §3.3.1, §3.4, §3.6) --


def test_our_open_carries_from_id_version_and_lang() -> None:
    opened = etree.fromstring(open_message(from_="example.com", id="s1&2", lang="en"))
    assert opened.tag == f"{{{ns.FRAMING}}}open"
    assert {str(name): value for name, value in opened.attrib.items()} == {
        "from": "example.com",
        "id": "s1&2",
        "version": "1.0",
        f"{{{ns.XML}}}lang": "en",
    }


def test_our_close_has_no_see_other_uri() -> None:
    closed = etree.fromstring(CLOSE)
    assert closed.tag == f"{{{ns.FRAMING}}}close"
    assert not closed.attrib


def test_a_stanza_built_without_a_namespace_is_written_in_jabber_client() -> None:
    iq = etree.Element("iq", type="get", id="p1")
    etree.SubElement(iq, f"{{{ns.PING}}}ping", nsmap=ns.default_ns(ns.PING))
    parsed = etree.fromstring(frame(iq))
    assert parsed.tag == f"{{{ns.CLIENT}}}iq"
    assert parsed[0].tag == f"{{{ns.PING}}}ping"


def test_qualified_stanzas_keep_their_declaration() -> None:
    message = etree.Element(f"{{{ns.CLIENT}}}message", nsmap=ns.default_ns(ns.CLIENT))
    etree.SubElement(message, f"{{{ns.CLIENT}}}body").text = "hi"
    assert frame(message) == b'<message xmlns="jabber:client"><body>hi</body></message>'
    reply = error_reply(element(b"<iq type='get' id='1'/>"), StanzaError("item-not-found"))
    assert etree.fromstring(frame(reply)).tag == f"{{{ns.CLIENT}}}iq"
    assert b"ns0" not in frame(reply)


def test_stream_errors_and_features_declare_the_streams_prefix() -> None:
    error = etree.fromstring(frame(StreamError("host-unknown", "not here").to_element()))
    assert error.tag == f"{{{ns.STREAM}}}error"
    assert error[0].tag == f"{{{ns.STREAM_ERRORS}}}host-unknown"
    features = etree.Element(f"{{{ns.STREAM}}}features", nsmap={"stream": ns.STREAM})
    assert etree.fromstring(frame(features)).tag == f"{{{ns.STREAM}}}features"


def test_what_the_server_writes_the_parser_reads_back() -> None:
    iq = etree.Element("iq", type="result", id="b1")
    bind = etree.SubElement(iq, f"{{{ns.BIND}}}bind", nsmap=ns.default_ns(ns.BIND))
    etree.SubElement(bind, f"{{{ns.BIND}}}jid").text = "juliet@example.com/balcony"
    again = element(frame(iq))
    assert again.findtext(f"{{{ns.BIND}}}bind/{{{ns.BIND}}}jid") == "juliet@example.com/balcony"
