"""Stream Management (XEP-0198) as transcripts without sockets: enabling (§3) and acks both ways (§4), with
every bad input the XEP names; resumption (§5) is in test_sm_resume_transcripts.py, with these helpers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import DOMAIN, wait_for
from lxml import etree
from transcript import SM, Harness, Transcript, transcript_config, transcript_server

from nitro.c2s.session import ClientSession
from nitro.core.context import Session
from nitro.xmpp import ns
from nitro.xmpp.jid import JID

ALICE = JID.make("alice", DOMAIN)
REQUEST = f"<r xmlns='{SM}'/>"


def ack(h: int | str) -> str:
    return f"<a xmlns='{SM}' h='{h}'/>"


def resume(previd: str, h: int) -> str:
    return f"<resume xmlns='{SM}' previd='{previd}' h='{h}'/>"


def ping(n: int) -> str:
    return f"<iq type='get' id='p{n}' to='{DOMAIN}'><ping xmlns='{ns.PING}'/></iq>"


def chat(to: str, body: str) -> str:
    return f"<message type='chat' to='{to}'><body>{body}</body></message>"


def sent(t: Transcript, name: str) -> list[etree._Element]:
    """Every element named `name` the stream was sent so far (read or not)."""
    return [
        entry[1]
        for entry in t.transport.entries
        if entry[0] == "element" and etree.QName(entry[1]).localname == name
    ]


def body(message: etree._Element) -> str | None:
    return message.findtext(f"{{{ns.CLIENT}}}body")


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with transcript_server(transcript_config(tmp_path)) as running:
        await running.user("alice")
        await running.user("bob")
        yield running


async def bound(harness: Harness, user: str = "alice", resource: str = "desk") -> Transcript:
    t = harness.connect()
    await t.login(user)
    await t.bind(resource)
    return t


async def managed(harness: Harness, user: str = "alice", resource: str = "desk") -> tuple[Transcript, str]:
    """A bound stream with resumable stream management; returns it and the resumption id."""
    t = await bound(harness, user, resource)
    return t, await t.enable()


def session_of(t: Transcript) -> ClientSession:
    session = t.session
    assert session is not None
    return session


def online(harness: Harness, jid: JID = ALICE) -> list[Session]:
    return list(harness.server.sessions.sessions_of(jid))


async def stored_offline(harness: Harness, username: str, count: int, timeout: float = 5.0) -> None:
    """Until `count` messages for `username` are in offline storage (the end of a session stores them after
    it left the registry)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (stored := await harness.server.storage.offline.count(username)) != count:
        if loop.time() > deadline:
            raise AssertionError(f"{stored} offline messages for {username}, not {count}")
        await asyncio.sleep(0.02)


# -- enabling (§3) ---------------------------------------------------------------------------------------


async def test_enable_before_bind_fails_and_binding_still_works(harness: Harness) -> None:
    """§3: the client enables after binding; before, `<failed><unexpected-request/></failed>`."""
    t = harness.connect()
    features = await t.login("alice")
    assert features.find(f"{{{SM}}}sm") is not None  # §2: offered once authenticated
    await t.client(f"<enable xmlns='{SM}' resume='true'/>")
    t.expect_error("unexpected-request")
    t.expect_nothing()
    await t.bind("desk")
    await t.enable()


async def test_enable_after_bind_gives_an_id_and_the_resumption_window(harness: Harness) -> None:
    """§3: `<enabled id resume max/>`; `max` is [stream_management] resume_timeout."""
    t = await bound(harness)
    await t.client(f"<enable xmlns='{SM}' resume='true'/>")
    enabled = t.expect("enabled", SM)
    assert enabled.get("id")
    assert (enabled.get("resume"), enabled.get("max")) == ("true", "300")
    t.expect_nothing()
    sm = session_of(t).sm
    assert sm is not None
    assert sm.id == enabled.get("id")


async def test_the_clients_max_is_honoured_when_lower(harness: Harness) -> None:
    """§3: the client's preferred maximum resumption time; the server's limit stays the cap."""
    t = await bound(harness)
    await t.client(f"<enable xmlns='{SM}' resume='true' max='60'/>")
    assert t.expect("enabled", SM).get("max") == "60"
    other = await bound(harness, "bob")
    await other.client(f"<enable xmlns='{SM}' resume='true' max='100000'/>")
    assert other.expect("enabled", SM).get("max") == "300"


async def test_enable_without_resume_has_no_id(harness: Harness) -> None:
    """§3: counting only; a session that cannot be resumed ends with its connection."""
    t = await bound(harness)
    await t.client(f"<enable xmlns='{SM}'/>")
    enabled = t.expect("enabled", SM)
    assert enabled.get("id") is None
    await t.lose_connection()
    assert online(harness) == []


async def test_enable_twice_fails_and_the_first_stays(harness: Harness) -> None:
    t, previd = await managed(harness)
    await t.client(f"<enable xmlns='{SM}' resume='true'/>")
    t.expect_error("unexpected-request")
    sm = session_of(t).sm
    assert sm is not None
    assert sm.id == previd


async def test_without_the_module_nothing_is_offered_and_enable_fails(tmp_path: Path) -> None:
    config = transcript_config(tmp_path, modules={"disabled": ["stream_management"]})
    async with transcript_server(config) as harness:
        await harness.user("alice")
        t = harness.connect()
        features = await t.login("alice")
        assert features.find(f"{{{SM}}}sm") is None
        await t.bind("desk")
        await t.client(f"<enable xmlns='{SM}' resume='true'/>")
        t.expect_error("service-unavailable")


# -- acks (§4) -------------------------------------------------------------------------------------------


async def test_r_is_answered_with_the_count_of_handled_stanzas(harness: Harness) -> None:
    """§4: 'h' counts stanzas handled since `<enable/>`; the client's `<a/>` releases what it covers."""
    t, _previd = await managed(harness)
    await t.client(ping(1))
    await t.client(ping(2))
    assert [t.expect("iq").get("id") for _ in range(2)] == ["p1", "p2"]
    await t.client(REQUEST)
    assert t.expect("a", SM).get("h") == "2"
    sm = session_of(t).sm
    assert sm is not None
    assert (sm.h_out, len(sm.unacked)) == (2, 2)
    await t.client(ack(2))
    assert not sm.unacked
    t.expect_nothing()


async def test_the_server_asks_for_acks_every_n_stanzas_one_at_a_time(tmp_path: Path) -> None:
    """§4: the server may send `<r/>`; never a second while one is outstanding."""
    async with transcript_server(
        transcript_config(tmp_path, stream_management={"ack_request_every": 2})
    ) as harness:
        await harness.user("alice")
        t, _previd = await managed(harness)
        for n in (1, 2, 3):
            await t.client(ping(n))
        assert t.expect("iq").get("id") == "p1"
        assert t.expect("iq").get("id") == "p2"
        t.expect("r", SM)  # after the second unacknowledged stanza
        assert t.expect("iq").get("id") == "p3"  # and no second request
        await t.client(ack(3))
        await t.client(ping(4))
        await t.client(ping(5))
        assert t.expect("iq").get("id") == "p4"
        assert t.expect("iq").get("id") == "p5"
        t.expect("r", SM)
        t.expect_nothing()


async def test_an_ack_above_what_was_sent_is_handled_count_too_high(harness: Harness) -> None:
    """§4: `<undefined-condition/>` with `<handled-count-too-high h send-count/>`; the session ends."""
    t, _previd = await managed(harness)
    await t.client(ping(1))
    t.expect("iq")
    await t.client(ack(5))
    t.expect("a", SM)  # what the server handled, said once more before it closes (§4 allows it)
    error = t.expect_stream_error("undefined-condition")
    too_high = error.to_element().find(f"{{{SM}}}handled-count-too-high")
    assert too_high is not None
    assert (too_high.get("h"), too_high.get("send-count")) == ("5", "1")
    assert online(harness) == []


async def test_acks_that_go_back_close_the_stream(harness: Harness) -> None:
    """§4: counters never decrease."""
    t, _previd = await managed(harness)
    for n in (1, 2, 3):
        await t.client(ping(n))
    t.drain()
    await t.client(ack(3))
    await t.client(ack(1))
    t.expect("a", SM)
    error = t.expect_stream_error("undefined-condition")
    assert error.text is not None
    assert "went back from 3 to 1" in error.text


@pytest.mark.parametrize("h", ["", "-1", "4294967296", "x"])
async def test_a_malformed_h_is_bad_format(harness: Harness, h: str) -> None:
    """§4: 'h' is an xs:unsignedInt."""
    t, _previd = await managed(harness)
    await t.client(ack(h))
    t.expect("a", SM)
    t.expect_stream_error("bad-format")


@pytest.mark.parametrize("element", [REQUEST, ack(0)], ids=["r", "a"])
async def test_acks_before_enable_are_unsupported(harness: Harness, element: str) -> None:
    t = await bound(harness)
    await t.client(element)
    t.expect_stream_error("unsupported-stanza-type")


async def test_a_client_that_never_acks_is_cut_off_and_nothing_is_lost(tmp_path: Path) -> None:
    """§4: the server bounds the unacknowledged queue; what was never acked goes to offline storage."""
    config = transcript_config(tmp_path, stream_management={"max_unacked": 3, "ack_request_every": 100})
    async with transcript_server(config) as harness:
        await harness.user("alice")
        await harness.user("bob")
        alice, _previd = await managed(harness)
        bob = await bound(harness, "bob")
        for n in range(1, 5):
            await bob.client(chat("alice@localhost/desk", str(n)))
        assert [body(alice.expect("message")) for _ in range(4)] == ["1", "2", "3", "4"]
        await wait_for(lambda: not alice.stream.open)  # the close runs as a server task
        alice.expect("a", SM)
        alice.expect_stream_error("policy-violation")
        await stored_offline(harness, "alice", 4)
        assert online(harness) == []
