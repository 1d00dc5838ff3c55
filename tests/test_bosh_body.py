"""The BOSH `<body/>` wrapper: restricted-XML parsing of requests (XEP-0124 §6) and our response bodies."""

from __future__ import annotations

import pytest
from lxml import etree

from nitro.xmpp import ns
from nitro.xmpp.bosh import HTTPBIND, XBOSH, BoshError, body, parse_body, payload, terminal

WRAP = f"<body xmlns='{HTTPBIND}' rid='7' sid='abc'>"


def parse(data: bytes | str, max_stanza_bytes: int = 10000) -> object:
    raw = data.encode() if isinstance(data, str) else data
    return parse_body(raw, max_stanza_bytes=max_stanza_bytes)


def test_attributes_and_payloads() -> None:
    parsed = parse_body(
        f"<body xmlns='{HTTPBIND}' xmlns:xmpp='{XBOSH}' rid='7' sid='abc' xmpp:restart='true'"
        " xml:lang='fr' pause='30'>"
        "<message xmlns='jabber:client' to='a@b'><body>one</body></message>"
        "<iq xmlns='jabber:client' type='get' id='x'><ping xmlns='urn:xmpp:ping'/></iq></body>".encode(),
        max_stanza_bytes=10000,
    )
    assert (parsed.rid, parsed.sid, parsed.restart, parsed.terminate) == (7, "abc", True, False)
    assert parsed.get(f"{{{ns.XML}}}lang") == "fr"
    assert parsed.number("pause") == 30
    assert [etree.QName(p).localname for p in parsed.payloads] == ["message", "iq"]
    assert parsed.payloads[0].getparent() is None  # standalone trees the stream may keep


def test_unqualified_stanzas_move_to_jabber_client() -> None:
    """XEP-0206 §3 note: many clients leave stanzas in the body's namespace."""
    (stanza,) = parse_body(
        f"{WRAP}<message to='a@b'><body>hi</body><x xmlns='jabber:x:oob'/></message></body>".encode(),
        max_stanza_bytes=10000,
    ).payloads
    assert stanza.tag == f"{{{ns.CLIENT}}}message"
    assert [child.tag for child in stanza] == [f"{{{ns.CLIENT}}}body", "{jabber:x:oob}x"]
    assert etree.tostring(stanza).startswith(b'<message xmlns="jabber:client"')


@pytest.mark.parametrize(
    ("data", "condition"),
    [
        (b"", "bad-request"),
        (b"<body rid='1'/>", "bad-request"),  # no namespace
        (b"<body xmlns='jabber:client' rid='1'/>", "bad-request"),  # wrong namespace
        (f"<message xmlns='{HTTPBIND}' rid='1'/>".encode(), "bad-request"),  # not <body/>
        (f"<body xmlns='{HTTPBIND}' rid='1'>".encode(), "bad-request"),  # cut off
        (f"<body xmlns='{HTTPBIND}' rid='1'><message></body>".encode(), "bad-request"),  # not well-formed
        (f"<body xmlns='{HTTPBIND}'/>".encode(), "bad-request"),  # no rid
        (f"<body xmlns='{HTTPBIND}' rid='x1'/>".encode(), "bad-request"),
        (f"<body xmlns='{HTTPBIND}' rid='0'/>".encode(), "bad-request"),
        (f"<body xmlns='{HTTPBIND}' rid='9007199254740992'/>".encode(), "bad-request"),  # above 2^53 - 1
        (f"<body xmlns='{HTTPBIND}' rid='1'>text</body>".encode(), "bad-request"),  # character data
        (f"<body xmlns='{HTTPBIND}' rid='1'><!-- c --></body>".encode(), "bad-request"),
        (f"<body xmlns='{HTTPBIND}' rid='1'><?pi x?></body>".encode(), "bad-request"),
        (f"<body xmlns='{HTTPBIND}' rid='1'/><!-- after -->".encode(), "bad-request"),
        (f"<body xmlns='{HTTPBIND}' rid='1'/><body xmlns='{HTTPBIND}' rid='2'/>".encode(), "bad-request"),
        (
            f"<!DOCTYPE body [<!ENTITY x 'y'>]><body xmlns='{HTTPBIND}' rid='1'>&x;</body>".encode(),
            "bad-request",
        ),
        (
            f"<body xmlns='{HTTPBIND}' rid='1'><m xmlns='jabber:client'>&undeclared;</m></body>".encode(),
            "bad-request",
        ),
        (
            f"<?xml version='1.0' encoding='ISO-8859-1'?><body xmlns='{HTTPBIND}' rid='1'/>".encode(),
            "bad-request",
        ),
        (f"<body xmlns='{HTTPBIND}' rid='1'/>".encode("utf-16"), "bad-request"),
        (f"<body xmlns='{HTTPBIND}' rid='1'><x:y/></body>".encode(), "bad-request"),  # unbound prefix
        (f"<body xmlns='{HTTPBIND}' rid='1'>{'<a>' * 70}{'</a>' * 70}</body>".encode(), "policy-violation"),
    ],
)
def test_bad_requests(data: bytes, condition: str) -> None:
    with pytest.raises(BoshError) as refused:
        parse(data)
    assert refused.value.condition == condition


def test_a_payload_over_the_stanza_limit() -> None:
    big = "x" * 40000
    data = f"{WRAP}<message xmlns='jabber:client'><body>{big}</body></message></body>"
    with pytest.raises(BoshError) as refused:
        parse(data, max_stanza_bytes=20000)
    assert refused.value.condition == "policy-violation"
    small = "<message xmlns='jabber:client'><body>ok</body></message>" * 500  # many small ones are fine
    assert len(parse_body(f"{WRAP}{small}</body>".encode(), max_stanza_bytes=20000).payloads) == 500


def test_predefined_entities_and_cdata_are_content() -> None:
    (stanza,) = parse_body(
        f"{WRAP}<message xmlns='jabber:client'><body>&lt;a&amp;b&gt;<![CDATA[<c>]]></body></message>"
        "</body>".encode(),
        max_stanza_bytes=10000,
    ).payloads
    assert stanza.findtext(f"{{{ns.CLIENT}}}body") == "<a&b><c>"


def test_payloads_declare_their_namespace_in_our_bodies() -> None:
    message = etree.Element(f"{{{ns.CLIENT}}}message", nsmap=ns.default_ns(ns.CLIENT))
    etree.SubElement(message, f"{{{ns.CLIENT}}}body").text = "hi"
    built_from_clark_names = etree.Element(f"{{{ns.CLIENT}}}presence")
    features = etree.Element(f"{{{ns.STREAM}}}features", nsmap={"stream": ns.STREAM})
    data = body([("ack", "5")], [payload(message), payload(built_from_clark_names), payload(features)])
    parsed = etree.fromstring(data)
    assert parsed.get("ack") == "5"
    assert [child.tag for child in parsed] == [
        f"{{{ns.CLIENT}}}message",
        f"{{{ns.CLIENT}}}presence",
        f"{{{ns.STREAM}}}features",
    ]
    assert parsed[0][0].tag == f"{{{ns.CLIENT}}}body"  # not httpbind's <body/>
    assert b"ns0:" not in data


def test_terminal_bodies() -> None:
    assert etree.fromstring(terminal(None)).attrib.items() == [("type", "terminate")]
    refused = etree.fromstring(terminal("item-not-found"))
    assert (refused.get("type"), refused.get("condition")) == ("terminate", "item-not-found")
    assert etree.fromstring(body()).tag == f"{{{HTTPBIND}}}body"
