"""Stream Management resumption (XEP-0198 §5) as transcripts without sockets: a detached session resumed on a
new stream, every way a resumption fails, and what becomes of what a session never had acknowledged (§4).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import wait_for
from lxml import etree
from test_sm_transcripts import (
    ALICE,
    REQUEST,
    ack,
    body,
    bound,
    chat,
    managed,
    online,
    ping,
    resume,
    sent,
    session_of,
    stored_offline,
)
from transcript import SM, Harness, transcript_config, transcript_server


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with transcript_server(transcript_config(tmp_path)) as running:
        await running.user("alice")
        await running.user("bob")
        yield running


# -- resumption (§5) -----------------------------------------------------------------------------------------


async def test_a_detached_session_resumes_on_a_new_stream(harness: Harness) -> None:
    """§5: alice reads three messages, acks one, handles a ping and loses the connection; the new stream's
    `<resume h='2'/>` says she handled two: `<resumed h='1'/>` (her ping), then only the third again, and
    the same session goes on."""
    alice, previd = await managed(harness)
    session = session_of(alice)
    bob = await bound(harness, "bob")
    for n in (1, 2, 3):
        await bob.client(chat("alice@localhost/desk", str(n)))
    assert [body(alice.expect("message")) for _ in range(3)] == ["1", "2", "3"]
    await alice.client(ack(1) + ping(1))
    assert alice.expect("iq").get("id") == "p1"
    await alice.lose_connection()
    alice.expect_nothing()
    assert session.detached
    assert online(harness) == [session]  # stanzas to it queue meanwhile

    await bob.client(chat("alice@localhost/desk", "4"))
    again = harness.connect()
    await again.login("alice")
    await again.client(resume(previd, 2))
    resumed = again.expect("resumed", SM)
    assert (resumed.get("previd"), resumed.get("h")) == (previd, "1")
    resent = [again.expect("message"), again.expect("iq"), again.expect("message")]
    assert [body(resent[0]), resent[1].get("id"), body(resent[2])] == ["3", "p1", "4"]  # in order
    again.expect("r", SM)
    again.expect_nothing()
    assert again.stream.session is session  # no new session: the old one, attached to this stream
    assert not alice.stream.open
    assert session.established
    assert online(harness) == [session]
    assert session.jid == ALICE.with_resource("desk")
    await bob.client(chat("alice@localhost/desk", "5"))
    assert body(again.expect("message")) == "5"
    await again.client(REQUEST)
    assert again.expect("a", SM).get("h") == "1"  # the count goes on from the old stream


async def test_resume_with_an_unknown_id_fails_and_binding_still_works(harness: Harness) -> None:
    """§5: `<failed><item-not-found/></failed>`; the stream may bind a new session instead."""
    t = harness.connect()
    await t.login("alice")
    await t.client(resume("no-such-session", 0))
    t.expect_error("item-not-found")
    t.expect_nothing()
    assert t.session is None
    await t.bind("desk")


async def test_another_user_cannot_resume_a_session(harness: Harness) -> None:
    """§5: the resuming stream must be authenticated as the session's user."""
    alice, previd = await managed(harness)
    await alice.lose_connection()
    mallory = harness.connect()
    await mallory.login("bob")
    await mallory.client(resume(previd, 0))
    mallory.expect_error("item-not-found")
    again = harness.connect()
    await again.login("alice")
    await again.client(resume(previd, 0))
    again.expect("resumed", SM)


async def test_resuming_while_the_old_stream_is_attached_closes_it_with_conflict(harness: Harness) -> None:
    """§5: the client moved on; the old connection hears `<conflict/>` and the session follows the new one."""
    old, previd = await managed(harness)
    session = session_of(old)
    new = harness.connect()
    await new.login("alice")
    await new.client(resume(previd, 0))
    new.expect("resumed", SM)
    old.expect_stream_error("conflict")
    old.expect_nothing()
    assert not old.stream.open
    assert new.stream.session is session
    assert online(harness) == [session]
    await old.lose_connection()  # the old transport reports its end: nothing changes
    assert session.established
    assert online(harness) == [session]


async def test_resume_with_h_above_what_was_sent_is_an_error_and_the_session_waits(harness: Harness) -> None:
    """§4, §5: an impossible 'h' is handled-count-too-high; the detached session is untouched."""
    alice, previd = await managed(harness)
    session = session_of(alice)
    await alice.lose_connection()
    wrong = harness.connect()
    await wrong.login("alice")
    await wrong.client(resume(previd, 7))
    error = wrong.expect_stream_error("undefined-condition")
    too_high = error.to_element().find(f"{{{SM}}}handled-count-too-high")
    assert too_high is not None
    assert (too_high.get("h"), too_high.get("send-count")) == ("7", "0")
    assert session.detached
    right = harness.connect()
    await right.login("alice")
    await right.client(resume(previd, 0))
    right.expect("resumed", SM)
    assert right.stream.session is session


async def test_resume_on_a_bound_stream_fails(harness: Harness) -> None:
    """§5: resumption replaces binding; a bound stream already has its session."""
    old, previd = await managed(harness)
    await old.lose_connection()
    t = await bound(harness, resource="phone")
    await t.client(resume(previd, 0))
    t.expect_error("unexpected-request")
    t.expect_nothing()


async def test_an_unanswered_ping_detaches_a_resumable_session(harness: Harness) -> None:
    """§5 with RFC 6120 §4.6.3: the silent connection is dropped but the session waits to be resumed, and
    the ping itself is resent."""
    alice, previd = await managed(harness)
    session = session_of(alice)
    session.last_read = time.monotonic() - harness.server.config.c2s.idle_ping_after - 1
    await alice.tick()
    ping_id = alice.expect("iq").get("id")
    session.ping_deadline = time.monotonic() - 1
    assert not await alice.tick()
    alice.expect_stream_error("connection-timeout")
    assert session.detached
    again = harness.connect()
    await again.login("alice")
    await again.client(resume(previd, 0))
    again.expect("resumed", SM)
    assert again.expect("iq").get("id") == ping_id
    again.expect("r", SM)


async def test_an_expired_session_cannot_be_resumed_and_its_messages_went_offline(tmp_path: Path) -> None:
    """§5: after the window the id is unknown; what the session held is treated as undelivered (§4)."""
    config = transcript_config(tmp_path, stream_management={"resume_timeout": 0.01})
    async with transcript_server(config) as harness:
        await harness.user("alice")
        await harness.user("bob")
        alice, previd = await managed(harness)
        session = session_of(alice)
        bob = await bound(harness, "bob")
        await bob.client(chat("alice@localhost/desk", "unacked"))
        alice.expect("message")
        await alice.lose_connection()
        await wait_for(lambda: session.closed)  # the module's timer ends it
        late = harness.connect()
        await late.login("alice")
        await late.client(resume(previd, 0))
        late.expect_error("item-not-found")
        await stored_offline(harness, "alice", 1)


# -- the end of a session without resumption (§4) -----------------------------------------------------------


async def test_unacked_messages_of_a_clean_close_go_to_another_resource(harness: Harness) -> None:
    """§4: closing says what was handled (`<a/>`); what the client never acked is delivered again."""
    phone, _previd = await managed(harness, resource="phone")
    desk = await bound(harness, resource="desk")
    await desk.client("<presence/>")
    bob = await bound(harness, "bob")
    await bob.client(chat("alice@localhost/phone", "for the phone"))
    assert body(phone.expect("message")) == "for the phone"
    desk.drain()
    await phone.client_closes()
    assert phone.expect("a", SM).get("h") == "0"
    phone.expect_close()
    messages = [m for m in desk.drain() if etree.QName(m).localname == "message"]
    assert [body(m) for m in messages] == ["for the phone"]


async def test_an_unacked_iq_request_bounces_to_its_sender(harness: Harness) -> None:
    """§4: an IQ request the client never acknowledged gets an error reply for its sender."""
    alice, _previd = await managed(harness)
    bob = await bound(harness, "bob")
    await bob.client(
        "<iq type='get' id='v1' to='alice@localhost/desk'><query xmlns='jabber:iq:version'/></iq>"
    )
    alice.expect("iq")
    await alice.client_closes()
    error = bob.expect_error("recipient-unavailable")
    assert error.get("id") == "v1"


async def test_binding_the_resource_of_a_detached_session_replaces_it(harness: Harness) -> None:
    """§5 and RFC 6120 §7.7.2.2: the new binding wins; the old session's unacked message is not lost."""
    old, _previd = await managed(harness)
    old_session = session_of(old)
    bob = await bound(harness, "bob")
    await bob.client(chat("alice@localhost/desk", "unacked"))
    old.expect("message")
    await old.lose_connection()
    new = await bound(harness)
    assert old_session.closed
    assert online(harness) == [session_of(new)]
    await new.client("<presence/>")  # offline messages come with initial presence (RFC 6121 §4.2)
    await wait_for(lambda: "unacked" in [body(m) for m in sent(new, "message")])


async def test_shutdown_keeps_the_messages_of_detached_sessions(harness: Harness) -> None:
    alice, _previd = await managed(harness)
    bob = await bound(harness, "bob")
    await bob.client(chat("alice@localhost/desk", "in flight"))
    alice.expect("message")
    await alice.lose_connection()
    await harness.shutdown()
    assert await harness.server.storage.offline.count("alice") == 1
