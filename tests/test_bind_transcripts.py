"""Resource binding (RFC 6120 §7) and the bound stream (§4.4, §4.6, §8.1.2.1) as transcripts without sockets:
binding with and without a resource, conflicts, closing, keepalives and pings driven by hand.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import DOMAIN
from transcript import Harness, Transcript, transcript_config, transcript_server

from nitro.c2s.inputs import State
from nitro.c2s.session import ClientSession
from nitro.core.context import Session
from nitro.xmpp import ns
from nitro.xmpp.jid import JID
from nitro.xmpp.xmlstream import StreamOpened

ALICE = JID.make("alice", DOMAIN)


def ping(n: int) -> str:
    return f"<iq type='get' id='p{n}' to='{DOMAIN}'><ping xmlns='{ns.PING}'/></iq>"


def bind_iq(resource: str, iq_id: str = "b1") -> str:
    return f"<iq type='set' id='{iq_id}'><bind xmlns='{ns.BIND}'><resource>{resource}</resource></bind></iq>"


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with transcript_server(transcript_config(tmp_path)) as running:
        await running.user("alice")
        yield running


async def bound(harness: Harness, resource: str | None = "desk") -> tuple[Transcript, ClientSession]:
    t = harness.connect()
    await t.login("alice")
    await t.bind(resource)
    session = t.session
    assert session is not None
    return t, session


def online(harness: Harness) -> list[Session]:
    return list(harness.server.sessions.sessions_of(ALICE))


# -- binding (§7) ----------------------------------------------------------------------------------------


async def test_bind_with_a_resource_makes_a_session_others_reach(harness: Harness) -> None:
    """§7.6.1: the server answers with the full JID; the session is in the registry."""
    t = harness.connect()
    await t.login("alice")
    assert t.session is None
    assert await t.bind("desk") == ALICE.with_resource("desk")
    t.expect_nothing()
    session = t.session
    assert session is not None
    assert session.state is State.ESTABLISHED
    assert online(harness) == [session]
    assert t.stream.open


@pytest.mark.parametrize("resource", [None, "", "   "])
async def test_bind_without_a_resource_gets_one_from_the_server(
    harness: Harness, resource: str | None
) -> None:
    """§7.6.2.1 (and an empty or blank one, §7.7.2.1): the server generates a resource."""
    t = harness.connect()
    await t.login("alice")
    jid = await t.bind(resource)
    assert jid.bare == ALICE
    assert jid.resource
    assert jid.resource.strip() == jid.resource


async def test_a_bad_resource_is_bad_request_and_binding_may_go_on(harness: Harness) -> None:
    """§7.7.2.1: a resource that is no valid resourcepart (RFC 7622 §3.4: at most 1023 bytes)."""
    t = harness.connect()
    await t.login("alice")
    await t.client(bind_iq("r" * 1024))
    error = t.expect_error("bad-request")
    assert error.get("id") == "b1"
    assert t.session is None
    assert await t.bind("desk", iq_id="b2") == ALICE.with_resource("desk")


async def test_binding_twice_is_not_allowed(harness: Harness) -> None:
    """§7.7.2.3 (one resource per stream): the first stays."""
    t, session = await bound(harness)
    await t.client(bind_iq("second", "b2"))
    assert t.expect_error("not-allowed").get("id") == "b2"
    t.expect_nothing()
    assert online(harness) == [session]
    assert session.jid == ALICE.with_resource("desk")


async def test_the_same_full_jid_bound_again_closes_the_older_session_with_conflict(harness: Harness) -> None:
    """§7.7.2.2: the server's policy here is to let the new session win; the old stream hears <conflict/>."""
    old, old_session = await bound(harness)
    new, new_session = await bound(harness)
    old.expect_stream_error("conflict")
    old.expect_nothing()
    assert not old.stream.open
    assert old_session.closed
    assert online(harness) == [new_session]
    assert new.stream.open


async def test_binding_past_the_resource_limit_is_a_resource_constraint(tmp_path: Path) -> None:
    """§7.6.2.1: the server limits resources per account (wait, the client may retry); binding a resource
    already bound is a replacement (§7.7.2.2), not one more, and stays allowed."""
    async with transcript_server(
        transcript_config(tmp_path, c2s={"max_resources_per_account": 2})
    ) as harness:
        await harness.user("alice")
        _one, _one_session = await bound(harness, "one")
        two, _two_session = await bound(harness, "two")
        t = harness.connect()
        await t.login("alice")
        await t.client(bind_iq("three", "b3"))
        error = t.expect_error("resource-constraint")
        assert error.get("id") == "b3"
        details = error.find(f"{{{ns.CLIENT}}}error")
        assert details is not None
        assert details.get("type") == "wait"
        assert len(online(harness)) == 2
        assert t.session is None
        assert await t.bind("two", "b4") == ALICE.with_resource("two")
        two.expect_stream_error("conflict")
        assert len(online(harness)) == 2


async def test_a_stanza_before_binding_is_not_authorized(harness: Harness) -> None:
    """§7.1: stanzas flow once a resource is bound; before, an error reply (as Prosody and ejabberd answer)
    and the stream goes on to bind."""
    t = harness.connect()
    await t.login("alice")
    await t.client(ping(1))
    assert t.expect_error("not-authorized").get("id") == "p1"
    await t.client("<iq type='result' id='x1'/>")  # no error for an error or a result (§8.3.1)
    t.expect_nothing()
    await t.bind("desk")


# -- the bound stream ------------------------------------------------------------------------------------


async def test_a_from_of_another_entity_is_invalid_from(harness: Harness) -> None:
    """§8.1.2.1 (4.9.3.9): the server checks 'from' against the authenticated JID."""
    t, _session = await bound(harness)
    await t.client("<message from='bob@localhost/x' to='alice@localhost'><body>hi</body></message>")
    t.expect_stream_error("invalid-from")
    assert online(harness) == []


@pytest.mark.parametrize("claimed", ["alice@localhost", "alice@localhost/desk", None])
async def test_the_server_stamps_the_full_jid(harness: Harness, claimed: str | None) -> None:
    """§8.1.2.1: a 'from' of the bare or full JID (or none) is replaced by the full JID."""
    t, _session = await bound(harness)
    sender = "" if claimed is None else f" from='{claimed}'"
    await t.client(f"<iq type='get' id='v1' to='{DOMAIN}'{sender}><query xmlns='jabber:iq:version'/></iq>")
    reply = t.expect("iq")
    assert (reply.get("type"), reply.get("to")) == ("result", "alice@localhost/desk")


async def test_an_unknown_nonza_is_unsupported_stanza_type(harness: Harness) -> None:
    """§4.9.3.24: a top-level element no module claims."""
    t, _session = await bound(harness)
    await t.client("<frobnicate xmlns='urn:example:nothing'/>")
    t.expect_stream_error("unsupported-stanza-type")


async def test_a_second_header_on_a_bound_stream_is_a_stream_error(harness: Harness) -> None:
    t, session = await bound(harness)
    assert not await t.event(StreamOpened(DOMAIN, None, "1.0", None, None, ns.CLIENT))
    t.expect_stream_error("invalid-xml")
    assert session.closed


async def test_whitespace_between_stanzas_is_accepted(harness: Harness) -> None:
    """§4.6.1: whitespace keepalives from the client are not stanzas."""
    t, _session = await bound(harness)
    await t.client("  \n  ")
    await t.client("\t" + ping(1))
    assert t.expect("iq").get("id") == "p1"
    t.expect_nothing()


async def test_the_client_closing_ends_the_session(harness: Harness) -> None:
    """§4.4: our close answers theirs; the resource is unbound."""
    t, session = await bound(harness)
    await t.client_closes()
    t.expect_close()
    t.expect_nothing()
    assert session.closed
    assert online(harness) == []


async def test_a_lost_connection_ends_the_session_and_others_go_on(harness: Harness) -> None:
    """Without stream management a session lives as long as its connection (XEP-0198 §5 is the exception)."""
    t, session = await bound(harness)
    other, other_session = await bound(harness, "phone")
    await t.client("<message to='alice@localhost/phone'><body>half a mess")  # cut mid-stanza
    await t.lose_connection()
    t.expect_nothing()
    assert session.closed
    assert online(harness) == [other_session]
    await other.client(ping(1))
    assert other.expect("iq").get("id") == "p1"  # and the half message never arrived
    other.expect_nothing()


# -- silence (§4.6) --------------------------------------------------------------------------------------


async def test_a_quiet_stream_gets_a_whitespace_keepalive(harness: Harness) -> None:
    """§4.6.1: after keepalive_interval without output; nothing before it."""
    t, session = await bound(harness)
    assert await t.tick()
    t.expect_nothing()
    session.last_write = time.monotonic() - harness.server.config.c2s.keepalive_interval - 1
    assert await t.tick()
    t.expect_plain("keepalive")
    t.expect_nothing()


async def test_an_idle_client_is_pinged_then_dropped_with_connection_timeout(harness: Harness) -> None:
    """§4.6.3 with XEP-0199 §4.2: a ping after idle_ping_after; no answer by ping_timeout ends the stream."""
    t, session = await bound(harness)
    session.last_read = time.monotonic() - harness.server.config.c2s.idle_ping_after - 1
    assert await t.tick()
    ping_iq = t.expect("iq")
    assert (ping_iq.get("type"), ping_iq.get("to")) == ("get", "alice@localhost/desk")
    assert ping_iq.find(f"{{{ns.PING}}}ping") is not None
    assert session.ping_deadline is not None
    assert t.stream.next_deadline() == session.ping_deadline
    session.ping_deadline = time.monotonic() - 1
    assert not await t.tick()
    t.expect_stream_error("connection-timeout")
    assert online(harness) == []


async def test_an_answered_ping_keeps_the_session(harness: Harness) -> None:
    t, session = await bound(harness)
    session.last_read = time.monotonic() - harness.server.config.c2s.idle_ping_after - 1
    await t.tick()
    ping_id = t.expect("iq").get("id")
    await t.client(f"<iq type='result' id='{ping_id}' to='{DOMAIN}'/>")
    t.expect_nothing()  # the answer is the server's own: not routed anywhere
    assert session.ping_deadline is None
    assert await t.tick()
    t.expect_nothing()
    assert online(harness) == [session]
