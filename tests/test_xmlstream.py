"""The sans-IO XML stream: byte strings in, events or stream errors out (RFC 6120 §4, §11)."""

from __future__ import annotations

import gc

import pytest
from lxml import etree

from nitro.xmpp import ns
from nitro.xmpp.errors import StanzaError, StreamError, error_reply
from nitro.xmpp.xmlstream import StanzaReceived, StreamClosed, StreamEvent, StreamOpened, XMLStreamParser
from nitro.xmpp.xmlwrite import STREAM_FOOTER, serialize, stream_header

BARE_HEADER = (
    b"<stream:stream xmlns='jabber:client'"
    b" xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>"
)
HEADER = b"<?xml version='1.0'?>" + BARE_HEADER
BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
)


def stream(body: bytes = b"", header: bytes = HEADER) -> bytes:
    """A stream header followed by `body`: what a client sends at the start of a stream."""
    return header + body


def feed(data: bytes, parser: XMLStreamParser | None = None, chunk: int | None = None) -> list[StreamEvent]:
    parser = parser or XMLStreamParser()
    size = chunk or max(len(data), 1)
    events: list[StreamEvent] = []
    for offset in range(0, len(data), size):
        events += parser.feed(data[offset : offset + size])
    return events


def stanzas(events: list[StreamEvent]) -> list[etree._Element]:
    return [event.element for event in events if isinstance(event, StanzaReceived)]


def stream_error(data: bytes, parser: XMLStreamParser | None = None, chunk: int | None = None) -> StreamError:
    with pytest.raises(StreamError) as caught:
        feed(data, parser, chunk)
    assert caught.value.text, "every stream error says what was wrong"
    return caught.value


# -- the stream header (RFC 6120 §4.7, §4.8) --


def test_header_reports_its_attributes() -> None:
    header = (
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
        b" to='example.com' from='juliet@example.com' id='s1' version='1.0' xml:lang='fr'>"
    )
    assert feed(header) == [
        StreamOpened(
            to="example.com",
            from_="juliet@example.com",
            version="1.0",
            lang="fr",
            id="s1",
            content_ns=ns.CLIENT,
        )
    ]


def test_header_without_version_or_with_a_future_one_is_reported_as_is() -> None:
    bare = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    assert feed(bare) == [
        StreamOpened(to=None, from_=None, version=None, lang=None, id=None, content_ns=ns.CLIENT)
    ]
    future = HEADER.replace(b"version='1.0' xml:lang", b"version='2.0' xml:lang")
    (opened,) = feed(future)
    assert isinstance(opened, StreamOpened)
    assert opened.version == "2.0"


def test_any_prefix_for_the_streams_namespace_is_accepted() -> None:
    header = b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:client'><message/>"
    opened, received = feed(header)
    assert isinstance(opened, StreamOpened)
    assert isinstance(received, StanzaReceived)
    assert received.element.tag == "{jabber:client}message"


def test_server_and_component_content_namespaces_when_configured() -> None:
    parser = XMLStreamParser(content_namespaces=frozenset({ns.SERVER, ns.COMPONENT}))
    (opened,) = feed(stream_header(from_=None, to="example.com", id=None, content_ns=ns.SERVER), parser)
    assert isinstance(opened, StreamOpened)
    assert opened.content_ns == ns.SERVER


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(
            b"<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong'>", id="streams-namespace"
        ),
        pytest.param(
            b"<stream:flow xmlns='jabber:client' xmlns:stream='" + ns.STREAM.encode() + b"'>", id="name"
        ),
        pytest.param(b"<stream xmlns='jabber:client'>", id="root-in-content-namespace"),
        pytest.param(
            b"<stream:stream xmlns='jabber:server' xmlns:stream='" + ns.STREAM.encode() + b"'>", id="s2s"
        ),
        pytest.param(
            b"<stream:stream xmlns:stream='" + ns.STREAM.encode() + b"'>", id="no-content-namespace"
        ),
    ],
)
def test_wrong_namespaces_in_the_header(header: bytes) -> None:
    assert stream_error(header).condition == "invalid-namespace"


def test_undeclared_stream_prefix() -> None:
    # RFC 6120 §4.9.3.2's own example: the "stream" prefix is used but never declared
    assert (
        stream_error(b"<stream:stream xmlns='jabber:client' to='example.com'>").condition
        == "bad-namespace-prefix"
    )


@pytest.mark.parametrize("encoding", [b"UTF-8", b"utf-8", b"utf8"])
def test_utf8_declaration_is_accepted(encoding: bytes) -> None:
    declaration = b"<?xml version='1.0' encoding='" + encoding + b"'?>"
    events = feed(stream(b"<message/>", header=declaration + BARE_HEADER))
    assert [type(event) for event in events] == [StreamOpened, StanzaReceived]


def test_other_encodings_are_refused() -> None:
    latin1 = b"<?xml version='1.0' encoding='ISO-8859-1'?>" + BARE_HEADER
    assert stream_error(latin1 + b"<message><body>\xe9</body></message>").condition == "unsupported-encoding"
    utf16 = HEADER.decode().replace("version='1.0'?", "version='1.0' encoding='UTF-16'?").encode("utf-16")
    assert stream_error(utf16).condition == "unsupported-encoding"
    assert stream_error(utf16, chunk=1).condition == "unsupported-encoding"
    assert stream_error(BARE_HEADER.decode().encode("utf-16-le")).condition == "unsupported-encoding"


# -- chunking, whitespace, stanzas (RFC 6120 §4.1) --

CONVERSATION = (
    b"<message to='romeo@example.net' type='chat'>"
    b"<body>h\xc3\xa9llo \xf0\x9f\x8c\xb9 &lt;3</body></message>\n"
    b"<presence><show>away</show></presence>"
    b"<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>"
)


def test_chunks_split_anywhere_give_the_same_events() -> None:
    whole = feed(stream(CONVERSATION))
    for chunk in (1, 2, 3, 7, 64):
        split = feed(stream(CONVERSATION), chunk=chunk)
        assert [type(event) for event in split] == [type(event) for event in whole]
        assert [serialize(element) for element in stanzas(split)] == [serialize(e) for e in stanzas(whole)]
    assert stanzas(whole)[0].findtext("{jabber:client}body") == "h\u00e9llo \U0001f339 <3"


def test_several_stanzas_in_one_chunk_arrive_in_order() -> None:
    events = feed(stream(CONVERSATION))
    assert isinstance(events[0], StreamOpened)
    assert [etree.QName(element).localname for element in stanzas(events)] == ["message", "presence", "iq"]


def test_whitespace_keepalives_produce_no_events() -> None:
    parser = XMLStreamParser()
    feed(stream(), parser)
    assert parser.feed(b" ") == []
    assert parser.feed(b"\n\r\n\t ") == []
    assert stanzas(parser.feed(b" <presence/> ")) != []
    assert parser.feed(b"\n") == []


def test_character_data_between_stanzas_is_refused() -> None:
    assert stream_error(stream(b"hello<presence/>")).condition == "bad-format"


def test_stanzas_keep_their_namespaces_and_only_their_own_xml_lang() -> None:
    body = (
        b"<message><body>hi</body></message>"
        b"<message xml:lang='de'/>"
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldABy</auth>"
    )
    plain, german, auth = stanzas(feed(stream(body)))
    assert etree.QName(plain).namespace == ns.CLIENT
    assert plain.get(f"{{{ns.XML}}}lang") is None  # the stream's xml:lang is for the caller to apply
    assert german.get(f"{{{ns.XML}}}lang") == "de"
    assert auth.tag == f"{{{ns.SASL}}}auth"
    assert auth.text == "AGp1bGlldABy"


def test_nested_default_namespaces_do_not_turn_into_invented_prefixes() -> None:
    body = b"<message><body>hi</body><x xmlns='jabber:x:data'><field/></x><stream:features/></message>"
    (message,) = stanzas(feed(stream(body)))
    assert message.prefix is None
    assert message[0].prefix is None
    assert message.nsmap[None] == ns.CLIENT
    assert etree.tostring(message).startswith(b'<message xmlns="jabber:client"')


def test_each_stanza_is_a_standalone_tree() -> None:
    (message,) = stanzas(feed(stream(b"<message><body>hi</body></message>\n  ")))
    assert message.getparent() is None
    assert message.getroottree().getroot() is message
    assert message.tail is None
    # inside the stream the header's xmlns='jabber:client' is in scope, so it is not repeated
    assert serialize(message) == b"<message><body>hi</body></message>"


def test_memory_stays_flat_over_many_stanzas() -> None:
    parser = XMLStreamParser()
    feed(stream(), parser)
    received = 0
    for number in range(10_000):
        received += len(parser.feed(b"<message id='%d'><body>hi</body></message> " % number))
    assert received == 10_000
    assert parser._root is not None
    assert len(parser._root) == 0
    assert parser._root.text is None


def test_predefined_entities_character_references_and_cdata_are_fine() -> None:
    body = (
        b"<message a='&lt;&gt;&amp;&quot;&apos;'>"
        b"<body>&lt;&gt;&amp;&quot;&apos;&#65;&#x42;<![CDATA[<&x;>]]></body></message>"
    )
    (message,) = stanzas(feed(stream(body)))
    assert message.get("a") == "<>&\"'"
    assert message.findtext("{jabber:client}body") == "<>&\"'AB<&x;>"


# -- restricted XML (RFC 6120 §11.1) --


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"<!DOCTYPE stream:stream>" + BARE_HEADER, id="doctype"),
        pytest.param(b"<?xml version='1.0'?><!DOCTYPE s [<!ENTITY x 'y'>]>" + BARE_HEADER, id="entity"),
        pytest.param(BILLION_LAUGHS + BARE_HEADER + b"<message>&lol3;</message>", id="billion-laughs"),
        pytest.param(
            b"<!DOCTYPE s [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>" + BARE_HEADER + b"<m>&x;</m>",
            id="external-entity",
        ),
        pytest.param(b"<!DOCTYPE s SYSTEM 'http://127.0.0.1:1/evil.dtd'>" + BARE_HEADER, id="ext-dtd"),
        pytest.param(b"<!-- hi -->" + BARE_HEADER, id="comment-before-header"),
        pytest.param(b"<?xml version='1.0'?><?php echo 1; ?>" + BARE_HEADER, id="pi-before-header"),
        pytest.param(stream(b"<!-- hi --><message/>"), id="comment-between-stanzas"),
        pytest.param(stream(b"<message><!-- hi --></message>"), id="comment-in-stanza"),
        pytest.param(stream(b"<?foo bar?><message/>"), id="pi-between-stanzas"),
        pytest.param(stream(b"<message><?foo bar?></message>"), id="pi-in-stanza"),
        pytest.param(stream(b"<message><body>&nbsp;</body></message><message/>"), id="undeclared-entity"),
        pytest.param(stream(b"<message to='&x;'/>"), id="undeclared-entity-in-attribute"),
    ],
)
def test_restricted_xml_is_refused(data: bytes) -> None:
    assert stream_error(data).condition == "restricted-xml"
    assert stream_error(data, chunk=1).condition == "restricted-xml"


def test_xinclude_is_an_inert_element() -> None:
    body = (
        b"<message xmlns:xi='http://www.w3.org/2001/XInclude'>"
        b"<xi:include href='file:///etc/passwd' parse='text'/></message>"
    )
    (message,) = stanzas(feed(stream(body)))
    assert message[0].tag == "{http://www.w3.org/2001/XInclude}include"
    assert "root:" not in serialize(message).decode()


# -- malformed XML (RFC 6120 §11.3, §4.9.3.13) --


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(stream(b"<a><b></a>"), id="mismatched-tags"),
        pytest.param(b"hello" + HEADER, id="garbage-before-header"),
        pytest.param(b"  " + HEADER, id="whitespace-before-declaration"),
        pytest.param(stream(b"<message><body>\xff\xfe</body></message>"), id="invalid-utf8"),
        pytest.param(stream(b"<message><body>\xed\xa0\x80</body></message>"), id="utf8-surrogate"),
        pytest.param(stream(b"<message><body>\x01</body></message>"), id="control-character"),
        pytest.param(stream(b"<message><body>&#0;</body></message>"), id="nul-character-reference"),
        pytest.param(stream(b"<message a='1' a='2'/>"), id="duplicate-attribute"),
        pytest.param(stream(b"<message a='<'/>"), id="lt-in-attribute"),
        pytest.param(stream(b"<message/></stream:stream><message/>"), id="after-close"),
        pytest.param(stream(b"<!DOCTYPE x><message/>"), id="doctype-inside-stream"),
    ],
)
def test_malformed_xml_is_refused(data: bytes) -> None:
    assert stream_error(data).condition == "not-well-formed"
    assert stream_error(data, chunk=1).condition == "not-well-formed"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"<?xml version='1.0'\x00?>", id="in-the-declaration"),
        pytest.param(b"<?xml\x00", id="after-the-declarations-name"),
        pytest.param(HEADER + b"\x00", id="after-the-header"),
        pytest.param(stream(b"<message>\x00"), id="inside-a-stanza"),
        pytest.param(stream(b"<message/>\x00"), id="between-stanzas"),
    ],
)
def test_a_nul_byte_is_refused_as_soon_as_it_arrives(data: bytes) -> None:
    """XML 1.0 §2.2 has no U+0000; inside the XML declaration libxml2 alone kept waiting for more input."""
    nul = data.index(b"\x00")
    parser = XMLStreamParser()
    feed(data[:nul], parser, chunk=1)  # fine so far
    with pytest.raises(StreamError) as caught:
        parser.feed(b"\x00")  # the byte itself fails, not the size limit or a timeout later
    assert caught.value.condition == "not-well-formed"
    assert stream_error(data).condition == "not-well-formed"


# -- limits --


def test_huge_stanza_is_refused_while_still_arriving() -> None:
    parser = XMLStreamParser()
    feed(stream(b"<message><body>"), parser)
    accepted: list[int] = []

    def send_ten_mebibytes() -> None:
        for _ in range(160):
            parser.feed(b"a" * 65536)
            accepted.append(65536)

    with pytest.raises(StreamError) as caught:
        send_ten_mebibytes()
    assert caught.value.condition == "policy-violation"
    assert sum(accepted) <= 262144


@pytest.mark.parametrize(
    "start",
    [
        b"<message><body>",
        b"<message to='",
        b"<message>" + b"<x/>" * 100_000,
        b"<message " + b"".join(b"a%d='b' " % number for number in range(30_000)),
    ],
    ids=["text", "attribute", "children", "attributes"],
)
def test_no_way_around_the_size_limit(start: bytes) -> None:
    data = stream(start + b"x" * (1024 * 1024))
    assert stream_error(data, chunk=65536).condition == "policy-violation"


def test_size_limit_counts_each_stanza_separately() -> None:
    parser = XMLStreamParser(max_stanza_bytes=4096)
    message = b"<message><body>" + b"a" * 3000 + b"</body></message>"
    assert len(stanzas(feed(stream(message * 100), parser, chunk=1000))) == 100
    assert stream_error(b"<message><body>" + b"a" * 5000, parser).condition == "policy-violation"


def test_nesting_limit() -> None:
    def nested(depth: int) -> bytes:
        return b"<message>" + b"<x>" * (depth - 1) + b"</x>" * (depth - 1) + b"</message>"

    assert len(stanzas(feed(stream(nested(64))))) == 1
    assert stream_error(stream(nested(65))).condition == "policy-violation"
    past_libxml2s_own_limit = stream(b"<message>" + b"<x>" * 5000)  # it stops at 256, in one feed
    assert stream_error(past_libxml2s_own_limit).condition == "policy-violation"


# -- closing, errors, reset --


def test_stream_close() -> None:
    parser = XMLStreamParser()
    events = feed(stream(b"<presence/>" + STREAM_FOOTER), parser)
    assert [type(event) for event in events] == [StreamOpened, StanzaReceived, StreamClosed]
    assert parser.feed(b"\n ") == []  # whitespace after the close is ignored
    assert stream_error(b"<presence/>", parser).condition == "not-well-formed"


def test_errors_are_final_until_reset() -> None:
    parser = XMLStreamParser()
    first = stream_error(stream(b"<a><b></a>"), parser)
    assert stream_error(b"<message/>", parser) is first
    parser.reset()
    assert [type(event) for event in feed(stream(b"<message/>"), parser)] == [StreamOpened, StanzaReceived]


def test_reset_discards_buffered_bytes_and_expects_a_new_header() -> None:
    # RFC 6120 §5.4.3.3: nothing sent before the TLS handshake may leak into the new stream
    parser = XMLStreamParser()
    events = feed(stream(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message><body>inj"), parser)
    assert [etree.QName(element).localname for element in stanzas(events)] == ["starttls"]
    parser.reset()
    events = feed(stream(b"<message><body>clean</body></message>"), parser, chunk=5)
    assert isinstance(events[0], StreamOpened)
    assert [element.findtext("{jabber:client}body") for element in stanzas(events)] == ["clean"]


# -- writing --


def test_stream_header_escapes_and_parses_back() -> None:
    header = stream_header(from_="example.com", to="a'b\"<&>", id="i&d", lang="en")
    assert header.startswith(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream=")
    (opened,) = feed(header)
    assert opened == StreamOpened(
        to="a'b\"<&>", from_="example.com", version="1.0", lang="en", id="i&d", content_ns=ns.CLIENT
    )


def test_stream_header_without_version_or_addresses() -> None:
    header = stream_header(from_=None, to=None, id=None, version=None)
    assert b"version" not in header.split(b"?>", 1)[1]
    assert b"from" not in header
    (opened,) = feed(header + STREAM_FOOTER)[:1]
    assert opened == StreamOpened(to=None, from_=None, version=None, lang="en", id=None, content_ns=ns.CLIENT)


def test_serialize_round_trips_a_parsed_stanza() -> None:
    body = (
        b"<message to='romeo@example.net' xml:lang='en'><body>h\xc3\xa9 &amp; &lt;</body>"
        b"<x xmlns='jabber:x:data' type='form'><field var='a'/></x></message>"
    )
    (message,) = stanzas(feed(stream(body)))
    data = serialize(message)
    assert not data.startswith(b"<?xml")
    (again,) = stanzas(feed(stream(data)))
    assert serialize(again) == data
    assert etree.tostring(again, method="c14n") == etree.tostring(message, method="c14n")


def test_serialize_writes_default_namespaces_for_clark_names() -> None:
    reply = etree.Element("{jabber:client}iq", type="result")
    etree.SubElement(reply, "{urn:xmpp:ping}ping")
    etree.SubElement(
        etree.SubElement(reply, "{jabber:client}error"), f"{{{ns.STANZA_ERRORS}}}gone"
    ).text = "x"
    assert serialize(reply) == (
        b'<iq type="result"><ping xmlns="urn:xmpp:ping"/>'
        b'<error><gone xmlns="urn:ietf:params:xml:ns:xmpp-stanzas">x</gone></error></iq>'
    )
    features = etree.Element(f"{{{ns.STREAM}}}features")
    etree.SubElement(features, f"{{{ns.SASL}}}mechanisms")
    assert serialize(features) == (
        b'<stream:features><mechanisms xmlns="urn:ietf:params:xml:ns:xmpp-sasl"/></stream:features>'
    )
    built = etree.Element("{jabber:client}message", nsmap=ns.default_ns(ns.CLIENT))
    built.tail = "\n"
    assert serialize(built) == b"<message/>"


def test_serialize_an_error_reply_built_from_clark_names() -> None:
    (iq,) = stanzas(feed(stream(b"<iq type='get' id='7' from='a@b/c'><query xmlns='urn:x'/></iq>")))
    data = serialize(error_reply(iq, StanzaError("item-not-found")))
    assert data.startswith(b'<iq to="a@b/c" id="7" type="error"><error type="cancel">')
    assert b"ns0" not in data


# -- releasing the parser of an idle stream between stanzas --


def released_after(data: bytes, header: bytes = HEADER) -> XMLStreamParser:
    parser = XMLStreamParser()
    feed(stream(data, header), parser)
    assert parser.release(), "input ended between two stanzas"
    assert parser.released
    return parser


@pytest.mark.parametrize(
    "before",
    [b"<presence/>", b"<message to='a@b'><body>hi</body></message> \n\t", b"<presence id='x' />", b"<r/>"],
)
def test_a_released_parser_reads_the_next_stanza_as_if_never_released(before: bytes) -> None:
    parser = released_after(before)
    [message] = stanzas(feed(b"<message to='b@c' id='2'><body>again &amp; again</body></message>", parser))
    assert not parser.released
    assert serialize(message) == b'<message to="b@c" id="2"><body>again &amp; again</body></message>'


def test_prefixes_declared_on_the_stream_element_still_apply_after_release() -> None:
    header = BARE_HEADER.replace(b"xmlns='jabber:client'", b"xmlns='jabber:client' xmlns:x='urn:example'")
    parser = released_after(b"<presence/>", header)
    [message] = stanzas(feed(b"<message><x:data/></message>", parser))
    assert message[0].tag == "{urn:example}data"


def test_the_stream_still_closes_after_release() -> None:
    parser = released_after(b"<presence/>")
    assert isinstance(feed(b" </stream:stream>", parser)[-1], StreamClosed)


@pytest.mark.parametrize(
    "partial",
    [
        b"<presence/><message><bo",
        b"<presence/><message id='a>",  # a '>' inside an attribute value of an unfinished tag
        b"<presence/><message",
        b"<presence/></mess",
    ],
)
def test_input_that_stopped_mid_element_keeps_the_parser(partial: bytes) -> None:
    parser = XMLStreamParser()
    feed(stream(partial), parser)
    assert not parser.release()
    assert not parser.released


def test_a_parser_kept_mid_stanza_completes_the_stanza() -> None:
    parser = XMLStreamParser()
    feed(stream(b"<presence/><message id='a>"), parser)
    assert not parser.release()
    [message] = stanzas(feed(b"b'><body>x</body></message>", parser))
    assert message.get("id") == "a>b"


def test_errors_are_still_caught_after_release() -> None:
    parser = released_after(b"<presence/>")
    assert stream_error(b"<message>&unknown;</message>", parser).condition == "restricted-xml"
    assert stream_error(b"text<presence/>", released_after(b"<presence/>")).condition == "bad-format"


def test_release_is_due_only_after_new_input() -> None:
    parser = XMLStreamParser()
    feed(stream(b"<presence/><message><bo"), parser)
    assert parser.release_due
    parser.release()
    assert not parser.release_due  # not retried until more bytes come
    feed(b"dy/></message>", parser)
    assert parser.release_due
    assert parser.release()


def test_a_presence_does_not_keep_the_streams_parser_alive() -> None:
    """A session keeps its last presence for long; lxml would otherwise keep the stream's parser with it."""
    [presence, message] = stanzas(feed(stream(b"<presence><show>away</show></presence><message/>")))
    assert not isinstance(presence.getroottree().parser, etree.XMLPullParser)
    assert serialize(presence) == b"<presence><show>away</show></presence>"
    assert message.getroottree().getroot() is message


def _pull_parsers() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, etree.XMLPullParser))


@pytest.mark.parametrize("let_go", ["release", "dispose", "reset"])
def test_a_let_go_parser_is_freed_at_once_not_at_the_next_garbage_collection(let_go: str) -> None:
    """lxml's parser and the open stream element refer to each other; a session's parser is old enough to
    wait minutes for the collection of the oldest generation, so the cycle is undone when it is let go."""
    gc.collect()
    gc.disable()
    try:
        parser = XMLStreamParser()
        feed(stream(b"<presence/><message to='a@b'><body>hi</body></message>"), parser)
        alive = _pull_parsers()
        if let_go == "release":
            assert parser.release()
        elif let_go == "dispose":
            parser.dispose()
        else:
            parser.reset()  # a stream restart (STARTTLS, SASL): a new parser replaces the old one
            alive += 1
        assert _pull_parsers() == alive - 1
    finally:
        gc.enable()
