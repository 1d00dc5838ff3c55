"""Stream setup as transcripts without sockets (RFC 6120 §4, §5): headers, features, STARTTLS, closing,
timeouts and the stream errors each bad input gets. SASL, binding and XEP-0198 have their own files.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import DOMAIN
from lxml import etree
from transcript import Harness, Transcript, transcript_config, transcript_server

from nitro.xmpp import ns
from nitro.xmpp.errors import StreamCondition
from nitro.xmpp.xmlstream import StreamOpened

STARTTLS = f"<starttls xmlns='{ns.TLS}'/>"


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with transcript_server(transcript_config(tmp_path)) as running:
        yield running


def children(features: etree._Element) -> list[str]:
    """The stream features offered, as local names in document order."""
    return [etree.QName(node).localname for node in features]


def mechanisms(features: etree._Element) -> list[str]:
    return [node.text or "" for node in features.iterfind(f"{{{ns.SASL}}}mechanisms/{{{ns.SASL}}}mechanism")]


# -- the stream header (§4.7) ------------------------------------------------------------------------------


async def test_the_answer_to_a_header_is_our_header_then_the_features(harness: Harness) -> None:
    """§4.7.1 to §4.7.4: 'from' is our domain, 'to' the client's 'from', a fresh id, the client's language."""
    t = harness.connect()
    await t.header(from_="alice@localhost", lang="de")
    header = t.expect_open()
    assert (header.from_, header.to, header.lang, header.version) == (DOMAIN, "alice@localhost", "de", "1.0")
    assert header.id
    features = t.expect("features", ns.STREAM)
    assert children(features) == ["mechanisms", "register"]
    assert mechanisms(features) == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]  # Direct TLS: PLAIN is offered
    t.expect_nothing()
    assert t.stream.open


async def test_each_stream_gets_its_own_id(harness: Harness) -> None:
    """§4.7.3: the id is unique; a new stream after a restart gets a new one."""
    ids = set()
    for _ in range(3):
        t = harness.connect()
        await t.open()
        ids.add(t.stream.negotiation.stream_id)
    assert len(ids) == 3


@pytest.mark.parametrize("to", ["example.org", "localhost.example.org", None])
async def test_a_header_to_a_domain_we_do_not_serve_is_host_unknown(harness: Harness, to: str | None) -> None:
    """§4.9.3.6; §4.9.1.2: an error triggered by the header still comes after our own header."""
    t = harness.connect()
    await t.header(to=to)
    assert t.expect_open().from_ == DOMAIN
    t.expect_stream_error("host-unknown")
    t.expect_nothing()
    assert not t.stream.open


@pytest.mark.parametrize("version", [None, "0.9", "2.0", "x"])
async def test_no_or_an_unsupported_version_is_unsupported_version(
    harness: Harness, version: str | None
) -> None:
    """§4.7.5: without version='1.0' the client does not speak XMPP 1.0; §4.9.3.25."""
    t = harness.connect()
    await t.header(version=version)
    t.expect_open()
    t.expect_stream_error("unsupported-version")
    t.expect_nothing()


async def test_a_higher_minor_version_is_served_as_1_0(harness: Harness) -> None:
    """§4.7.5: a minor version above ours is spoken as ours."""
    t = harness.connect()
    await t.header(version="1.1")
    assert t.expect_open().version == "1.0"
    t.expect("features", ns.STREAM)


async def test_a_wrong_stream_namespace_is_invalid_namespace_after_our_header(harness: Harness) -> None:
    """§4.8.1, §4.9.3.10; the error comes from the parser, before the header was answered (§4.9.1.2)."""
    t = harness.connect()
    await t.header(stream_ns="urn:wrong")
    assert t.expect_open().id is None
    t.expect_stream_error("invalid-namespace")
    t.expect_nothing()


async def test_a_second_header_mid_stream_is_a_stream_error(harness: Harness) -> None:
    """§4.3.3: only a restart opens a new stream; a header on an open stream (as a WebSocket `<open/>` could
    bring) is refused without a second header of ours."""
    t = harness.connect()
    await t.open()
    assert not await t.event(StreamOpened(DOMAIN, None, "1.0", None, None, ns.CLIENT))
    t.expect_stream_error("invalid-xml")
    t.expect_nothing()


@pytest.mark.parametrize(
    ("payload", "condition"),
    [
        ("<message><body>unclosed</message>", "not-well-formed"),  # §4.9.3.13
        (b"<message to='a@localhost'>\xff\xfe</message>", "not-well-formed"),  # not UTF-8 (§11.6)
        ("<!-- a comment -->", "restricted-xml"),  # §11.1
        ("<?php evil() ?>", "restricted-xml"),
        ("<message><body>&unknown;</body></message>", "restricted-xml"),
        ("<x:message><body/></x:message>", "bad-namespace-prefix"),  # §4.9.3.2
    ],
)
async def test_bad_xml_after_the_header_is_the_stream_error_the_parser_names(
    harness: Harness, payload: str | bytes, condition: StreamCondition
) -> None:
    t = harness.connect()
    await t.open()
    await t.client(payload)
    t.expect_stream_error(condition)
    t.expect_nothing()
    assert not t.stream.open


@pytest.mark.parametrize(
    "prolog",
    [
        "<!DOCTYPE stream [<!ENTITY a 'x'>]>",
        "<!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;'>]>",
        "<!DOCTYPE foo [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>",
    ],
    ids=["dtd", "entity-bomb", "external-entity"],
)
async def test_a_dtd_before_the_header_is_restricted_xml_after_our_header(
    harness: Harness, prolog: str
) -> None:
    """§11.1: no DTDs; the error is answered with a header first (§4.9.1.2)."""
    t = harness.connect()
    await t.client(
        f"<?xml version='1.0'?>{prolog}<stream:stream xmlns='jabber:client' xmlns:stream='{ns.STREAM}' "
        f"to='{DOMAIN}' version='1.0'>"
    )
    t.expect_open()
    t.expect_stream_error("restricted-xml")
    t.expect_nothing()


async def test_a_stanza_over_the_size_limit_is_a_policy_violation(tmp_path: Path) -> None:
    """§13.12 (4): the server limits stanza size; §4.9.3.14."""
    async with transcript_server(transcript_config(tmp_path, c2s={"max_stanza_bytes": 10_000})) as harness:
        t = harness.connect()
        await t.open()
        await t.client("<message><body>" + "x" * 20_000)
        t.expect_stream_error("policy-violation")
        t.expect_nothing()


# -- before authentication (§4.9.3.12) --------------------------------------------------------------------


@pytest.mark.parametrize(
    "element",
    [
        "<message to='bob@localhost'><body>hi</body></message>",
        "<presence/>",
        "<iq type='get' id='q1' to='localhost'><query xmlns='jabber:iq:roster'/></iq>",
        f"<iq type='set' id='b1'><bind xmlns='{ns.BIND}'/></iq>",
        "<frobnicate xmlns='urn:example:nothing'/>",
        "<enable xmlns='urn:xmpp:sm:3'/>",
        "<resume xmlns='urn:xmpp:sm:3' previd='x' h='0'/>",
    ],
    ids=["message", "presence", "roster", "bind", "nonza", "sm-enable", "sm-resume"],
)
async def test_anything_but_negotiation_before_authentication_is_not_authorized(
    harness: Harness, element: str
) -> None:
    t = harness.connect()
    await t.open()
    await t.client(element)
    t.expect_stream_error("not-authorized")
    t.expect_nothing()
    assert not t.stream.open


# -- STARTTLS (§5) -----------------------------------------------------------------------------------------


async def starttls(t: Transcript) -> etree._Element:
    """`<starttls/>`, `<proceed/>`, the handshake, the restart and the new stream's features."""
    await t.client(STARTTLS)
    t.expect("proceed", ns.TLS)
    t.expect_plain("starttls")
    t.expect_plain("restart")
    assert t.transport.encrypted
    return await t.open()


async def test_required_starttls_is_the_only_feature_and_leads_to_the_real_ones(harness: Harness) -> None:
    """§5.3.1: TLS required, nothing else is offered before it; §5.4.3.3: after it, a fresh stream whose
    features no longer offer STARTTLS."""
    t = harness.connect(encrypted=False)
    features = await t.open()
    assert children(features) == ["starttls"]
    assert features.find(f"{{{ns.TLS}}}starttls/{{{ns.TLS}}}required") is not None
    old_id = t.stream.negotiation.stream_id
    features = await starttls(t)
    assert children(features) == ["mechanisms", "register"]
    assert mechanisms(features) == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
    assert t.stream.negotiation.stream_id != old_id
    t.expect_nothing()


async def test_optional_starttls_is_offered_beside_mechanisms_without_plain(tmp_path: Path) -> None:
    """§5.3.1: voluntary TLS; PLAIN only over TLS (RFC 4616 §6) unless configured."""
    config = transcript_config(tmp_path, c2s={"require_encryption": False})
    async with transcript_server(config) as harness:
        t = harness.connect(encrypted=False)
        features = await t.open()
        assert children(features) == ["starttls", "mechanisms", "register"]
        assert features.find(f"{{{ns.TLS}}}starttls/{{{ns.TLS}}}required") is None
        assert mechanisms(features) == ["SCRAM-SHA-256", "SCRAM-SHA-1"]
        features = await starttls(t)
        assert mechanisms(features) == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]


async def test_without_a_tls_context_there_is_no_starttls(tmp_path: Path) -> None:
    async with transcript_server(transcript_config(tmp_path), tls=False) as harness:
        t = harness.connect(encrypted=False)
        features = await t.open()
        assert children(features) == ["mechanisms", "register"]
        assert mechanisms(features) == ["SCRAM-SHA-256", "SCRAM-SHA-1"]


async def test_starttls_without_a_tls_context_fails_and_closes(tmp_path: Path) -> None:
    """§5.4.2.2: STARTTLS that was not offered is the failure case: `<failure/>`, then the stream closes."""
    async with transcript_server(transcript_config(tmp_path), tls=False) as harness:
        t = harness.connect(encrypted=False)
        await t.open()
        await t.client(STARTTLS)
        t.expect("failure", ns.TLS)
        t.expect_close()
        t.expect_nothing()
        assert not t.stream.open


async def test_starttls_on_an_encrypted_stream_fails_and_closes(harness: Harness) -> None:
    """§5.4.2.2: Direct TLS (XEP-0368) is already encrypted: STARTTLS is not offered again."""
    t = harness.connect(encrypted=True)
    await t.open()
    await t.client(STARTTLS)
    t.expect("failure", ns.TLS)
    t.expect_close()
    t.expect_nothing()


async def test_starttls_twice_fails_the_second_time(harness: Harness) -> None:
    """§5.4.3.3: after TLS the features carry no STARTTLS, and asking again is the failure case."""
    t = harness.connect(encrypted=False)
    await t.open()
    await starttls(t)
    await t.client(STARTTLS)
    t.expect("failure", ns.TLS)
    t.expect_close()


async def test_an_error_after_the_tls_restart_comes_with_a_new_header(harness: Harness) -> None:
    """§5.4.3.3: after TLS the client opens a new stream; an error before that still has a header first
    (§4.9.1.2)."""
    t = harness.connect(encrypted=False)
    await t.open()
    await t.client(STARTTLS)
    t.expect("proceed", ns.TLS)
    t.expect_plain("starttls")
    t.expect_plain("restart")
    await t.client("<message/>")
    t.expect_open()
    t.expect_stream_error("invalid-namespace")


@pytest.mark.parametrize(
    ("element", "condition"),
    [
        (f"<auth xmlns='{ns.SASL}' mechanism='SCRAM-SHA-256'/>", "policy-violation"),
        (f"<iq type='get' id='g1'><query xmlns='{ns.REGISTER}'/></iq>", "not-authorized"),
        ("<message to='bob@localhost'><body>hi</body></message>", "not-authorized"),
    ],
    ids=["auth", "register", "message"],
)
async def test_nothing_but_starttls_while_tls_is_required(
    harness: Harness, element: str, condition: StreamCondition
) -> None:
    """§5.3.1: while TLS is mandatory-to-negotiate the client may not proceed with anything else."""
    t = harness.connect(encrypted=False)
    await t.open()
    await t.client(element)
    t.expect_stream_error(condition)
    t.expect_nothing()


# -- closing, silence, shutdown (§4.4, §4.6, §4.9.3) ------------------------------------------------------


async def test_the_client_closing_its_stream_closes_ours(harness: Harness) -> None:
    """§4.4: the other side answers `</stream:stream>` with its own."""
    t = harness.connect()
    await t.open()
    await t.client_closes()
    t.expect_close()
    t.expect_nothing()
    assert not t.stream.open


async def test_a_negotiation_that_takes_too_long_is_connection_timeout(harness: Harness) -> None:
    """§4.9.3.4: a stream not negotiated by its deadline is closed; before it the timer does nothing."""
    t = harness.connect()
    await t.open()
    negotiation = t.stream.negotiation
    assert t.stream.next_deadline() == negotiation.negotiation_deadline
    assert await t.tick()
    t.expect_nothing()
    negotiation.negotiation_deadline = time.monotonic() - 1
    assert not await t.tick()
    t.expect_stream_error("connection-timeout")
    t.expect_nothing()


async def test_a_silent_connection_times_out_with_a_header_of_ours(harness: Harness) -> None:
    """§4.9.1.2: no header came, so ours goes out before the error."""
    t = harness.connect()
    t.stream.negotiation.negotiation_deadline = time.monotonic() - 1
    await t.tick()
    t.expect_open()
    t.expect_stream_error("connection-timeout")


async def test_shutdown_is_system_shutdown_for_every_stream(harness: Harness) -> None:
    """§4.9.3.21: streams negotiating and bound alike hear why they end."""
    await harness.user("alice")
    negotiating = harness.connect()
    await negotiating.open()
    bound = harness.connect()
    await bound.login("alice")
    await bound.bind("desk")
    await harness.shutdown(clients_leave_first=False)
    negotiating.expect_stream_error("system-shutdown")
    bound.expect_stream_error("system-shutdown")
    assert len(harness.server.sessions) == 0
