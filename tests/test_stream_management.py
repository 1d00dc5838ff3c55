"""Stream Management (XEP-0198): acks both ways, resumption after a lost connection, what happens to the
stanzas a client never acknowledged, and every bad input the XEP names.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
import slixmpp
from conftest import PASSWORD, Clients, make_config, wait_for
from lxml import etree
from slixmpp.exceptions import IqError
from test_c2s import HEADER, logged_in, opened, plain, still_serving, stream_error

from nitro.server import Server, running_server
from nitro.xmpp.errors import StreamError
from nitro.xmpp.jid import JID
from nitro.xmpp.sm import MAX_SEQ, HandledCountTooHigh, SmState, is_stanza, parse_stanza

ENABLE = b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>"
REQUEST = b"<r xmlns='urn:xmpp:sm:3'/>"
ENABLED = re.compile(rb'<enabled xmlns="urn:xmpp:sm:3" id="([^"]+)" resume="true" max="(\d+)"/>')
R = re.compile(rb"<r xmlns=[\"']urn:xmpp:sm:3[\"']/>")


def ack(h: int) -> bytes:
    return f"<a xmlns='urn:xmpp:sm:3' h='{h}'/>".encode()


def ping(n: int) -> bytes:
    return f"<iq type='get' id='p{n}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>".encode()


class Peer:
    """A raw stream read as a transcript: `expect` consumes the input up to the next match of a pattern."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def expect(self, pattern: bytes | re.Pattern[bytes], timeout: float = 5.0) -> re.Match[bytes]:
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = asyncio.get_running_loop().time() + timeout
        while (match := regex.search(self.buffer)) is None:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"{regex.pattern!r} not received; got {self.buffer[-500:]!r}")
            chunk = await asyncio.wait_for(self.reader.read(65536), remaining)
            if not chunk:
                raise AssertionError(f"stream ended before {regex.pattern!r}; got {self.buffer[-500:]!r}")
            self.buffer += chunk
        self.buffer = self.buffer[match.end() :]
        return match

    async def rest(self) -> bytes:
        """Everything up to the end of the stream."""
        return (await self.expect(re.compile(rb".*</stream:stream>", re.DOTALL))).group(0)

    def abort(self) -> None:
        """The connection dies without `</stream:stream>` (a phone entering a tunnel)."""
        self.writer.transport.abort()


async def bound(server: Server, username: str, resource: str = "raw") -> Peer:
    return Peer(*await logged_in(server, username, resource))


async def managed(server: Server, username: str, resource: str = "raw") -> tuple[Peer, str]:
    """A bound raw stream with resumable stream management enabled; returns it and its resumption id."""
    peer = await bound(server, username, resource)
    peer.send(ENABLE)
    return peer, (await peer.expect(ENABLED)).group(1).decode()


async def authenticated(server: Server, username: str) -> Peer:
    """A raw stream authenticated as `username`, not bound: where `<resume/>` goes (XEP-0198 §5)."""
    reader, writer = await opened(server)
    peer = Peer(reader, writer)
    peer.send(plain(username, PASSWORD))
    await peer.expect(b"<success")
    peer.send(HEADER)
    features = await peer.expect(re.compile(rb"<stream:features>.*?</stream:features>", re.DOTALL))
    assert b'<sm xmlns="urn:xmpp:sm:3"/>' in features.group(0)
    return peer


def online(server: Server, jid: str) -> int:
    return len(server.sessions.sessions_of(JID.parse(jid)))


async def stored_offline(server: Server, username: str, count: int, timeout: float = 5.0) -> None:
    """Wait until `count` messages for `username` are in offline storage."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (stored := await server.storage.offline.count(username)) != count:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{stored} offline messages for {username}, not {count}")
        await asyncio.sleep(0.02)


def cut(client: slixmpp.ClientXMPP) -> None:
    """Drop the client's TCP connection without closing its stream: a network failure."""
    assert client.transport is not None, "the client is not connected"
    client.transport.abort()


async def login_collecting(pool: Clients, jid: str, resource: str | None = None) -> list[str]:
    """Log in (with initial presence, so offline messages flow) and collect message bodies as they come."""
    received: list[str] = []

    def collect(client: slixmpp.ClientXMPP) -> None:
        client.add_event_handler("message", lambda message: received.append(message["body"]))

    await pool.login(f"{jid}/{resource}" if resource else jid, setup=collect)
    return received


def resume(previd: str, h: int) -> bytes:
    return f"<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='{h}'/>".encode()


def body(text: str | int) -> re.Pattern[bytes]:
    """A whole message carrying `text` as its body."""
    return re.compile(rb"<message[^>]*>.*?<body>" + str(text).encode() + rb"</body>.*?</message>", re.DOTALL)


def bodies(data: bytes) -> list[str]:
    return [m.decode() for m in re.findall(rb"<body>([^<]*)</body>", data)]


# -- the state, sans-IO --------------------------------------------------------------------------------


def test_acks_release_what_they_cover_across_the_wrap() -> None:
    state = SmState(h_out=MAX_SEQ - 2)
    for n in range(4):
        state.sent(parse_stanza(f"<message><body>{n}</body></message>".encode()))
    assert state.h_out == 2
    assert state.acknowledge(0) == 2  # h wrapped: 2^32 - 1, then 0
    assert [stanza.findtext("{jabber:client}body") for stanza in state.unacked] == ["2", "3"]
    assert state.acknowledge(0) == 0  # the same ack twice is no news
    assert state.acknowledge(2) == 2
    assert not state.unacked


def test_impossible_acks_raise_without_changing_anything() -> None:
    state = SmState()
    for _ in range(3):
        state.sent(etree.Element("iq"))
    state.acknowledge(2)
    with pytest.raises(HandledCountTooHigh) as too_high:
        state.acknowledge(4)
    assert (too_high.value.h, too_high.value.send_count) == (4, 3)
    with pytest.raises(StreamError) as backwards:
        state.acknowledge(1)
    assert backwards.value.condition == "undefined-condition"
    assert state.acked == 2
    assert len(state.unacked) == 1


def test_ack_requests_are_never_more_than_one_outstanding() -> None:
    state = SmState()
    state.sent(etree.Element("iq"))
    assert not state.request_due(2)
    state.sent(etree.Element("iq"))
    assert state.request_due(2)
    state.sent(etree.Element("iq"))
    assert not state.request_due(2)  # still waiting for the answer
    state.acknowledge(3)
    state.sent(etree.Element("iq"))
    state.sent(etree.Element("iq"))
    assert state.request_due(2)


def test_the_state_survives_a_trip_through_json() -> None:
    state = SmState.start(resume=True, resume_timeout=300)
    state.received()
    state.sent(parse_stanza("<message to='bob@localhost/phone'><body>héllo</body></message>".encode()))
    state.jid = "bob@localhost/phone"
    state.priority = 5
    state.presence = b"<presence xmlns='jabber:client'><show>away</show></presence>"
    state.directed_to = ("carol@localhost",)
    state.resume_deadline = 1e9
    copy = SmState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert copy.to_dict() == state.to_dict()
    assert len(state.id) >= 32
    assert SmState.start(resume=True, resume_timeout=300).id != state.id  # unguessable, never reused
    message = copy.unacked[0]
    assert message.tag == "{jabber:client}message"
    assert message.findtext("{jabber:client}body") == "héllo"
    assert is_stanza(message)


# -- enabling and acks (§3, §4) --------------------------------------------------------------------------


async def test_enable_after_bind_and_acks_count_handled_stanzas(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    alice = await bound(server, "alice")
    alice.send(ENABLE)
    enabled = await alice.expect(ENABLED)
    assert int(enabled.group(2)) == 300  # [stream_management] resume_timeout
    alice.send(ping(1) + ping(2))
    await alice.expect(b'id="p1"')
    await alice.expect(b'id="p2"')
    alice.send(REQUEST)
    await alice.expect(b'<a xmlns="urn:xmpp:sm:3" h="2"/>')  # the server handled two stanzas
    (session,) = server.sessions
    assert session.sm is not None
    assert (session.sm.h_out, len(session.sm.unacked)) == (2, 2)
    alice.send(ack(2))  # and alice got both results
    await wait_for(lambda: session.sm is not None and not session.sm.unacked)
    alice.writer.close()


async def test_the_server_asks_for_acks_every_n_stanzas_but_one_at_a_time(tmp_path: Path) -> None:
    config = make_config(tmp_path, stream_management={"ack_request_every": 2})
    async with running_server(config) as server:
        pool = Clients(server)
        await pool.user("alice")
        alice, _previd = await managed(server, "alice")
        alice.send(ping(1) + ping(2) + ping(3))
        await alice.expect(b'id="p2"')
        await alice.expect(R)  # after the second unacknowledged stanza
        await alice.expect(b'id="p3"')
        alice.send(ack(3) + REQUEST)  # answers the request; asks the server in turn
        await alice.expect(b'<a xmlns="urn:xmpp:sm:3" h="3"/>')
        assert R.search(alice.buffer) is None  # no second request while the first was outstanding
        alice.send(ping(4) + ping(5))
        await alice.expect(b'id="p5"')
        await alice.expect(R)
        alice.writer.close()


async def test_without_the_module_nothing_is_offered_and_enable_fails(tmp_path: Path) -> None:
    config = make_config(tmp_path, modules={"disabled": ["stream_management"]})
    async with running_server(config) as server:
        await Clients(server).user("alice")
        reader, writer = await logged_in(server, "alice")
        alice = Peer(reader, writer)
        alice.send(ENABLE)
        failed = await alice.expect(re.compile(rb"<failed .*?</failed>"))
        assert b"<service-unavailable" in failed.group(0)
        alice.writer.close()


async def test_enable_before_bind_fails_and_binding_still_works(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    alice = await authenticated(server, "alice")
    alice.send(ENABLE)
    failed = await alice.expect(re.compile(rb"<failed .*?</failed>"))
    assert b"<unexpected-request" in failed.group(0)
    alice.send(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    await alice.expect(b"<jid>alice@localhost/")
    alice.send(ENABLE)
    await alice.expect(ENABLED)
    alice.writer.close()


async def test_enable_twice_fails_and_the_first_stays(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    alice, previd = await managed(server, "alice")
    alice.send(ENABLE)
    failed = await alice.expect(re.compile(rb"<failed .*?</failed>"))
    assert b"<unexpected-request" in failed.group(0)
    (session,) = server.sessions
    assert session.sm is not None
    assert session.sm.id == previd
    alice.writer.close()


async def test_an_ack_above_what_was_sent_is_handled_count_too_high(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    alice, _previd = await managed(server, "alice")
    alice.send(ping(1))
    await alice.expect(b'id="p1"')
    alice.send(ack(5))
    data = await stream_error(alice.reader, "undefined-condition")
    assert b'<handled-count-too-high xmlns="urn:xmpp:sm:3" h="5" send-count="1"/>' in data
    alice.writer.close()
    await wait_for(lambda: len(server.sessions) == 0)
    await still_serving(clients)


async def test_acks_that_go_backwards_close_the_stream(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    alice, _previd = await managed(server, "alice")
    alice.send(ping(1) + ping(2) + ping(3))
    await alice.expect(b'id="p3"')
    alice.send(ack(3) + ack(1))
    data = await stream_error(alice.reader, "undefined-condition")
    assert b"went back from 3 to 1" in data
    alice.writer.close()
    await still_serving(clients)


@pytest.mark.parametrize("h", ["", "-1", "4294967296", "x"])
async def test_a_malformed_h_is_bad_format(server: Server, clients: Clients, h: str) -> None:
    await clients.user("alice")
    alice, _previd = await managed(server, "alice")
    alice.send(f"<a xmlns='urn:xmpp:sm:3' h='{h}'/>".encode())
    await stream_error(alice.reader, "bad-format")
    alice.writer.close()


async def test_acks_before_enable_are_unsupported(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    alice = await bound(server, "alice")
    alice.send(REQUEST)
    await stream_error(alice.reader, "unsupported-stanza-type")
    alice.writer.close()


async def test_a_client_that_never_acks_is_cut_off_and_nothing_is_lost(tmp_path: Path) -> None:
    config = make_config(tmp_path, stream_management={"max_unacked": 3, "ack_request_every": 100})
    async with running_server(config) as server:
        pool = Clients(server)
        alice_jid = await pool.user("alice")
        bob_jid = await pool.user("bob")
        bob, _previd = await managed(server, "bob", "phone")
        alice = await pool.login(alice_jid)
        for n in range(1, 5):
            alice.send_message(mto=slixmpp.JID(f"{bob_jid}/phone"), mbody=str(n))
        data = await stream_error(bob.reader, "policy-violation")
        assert bodies(data) == ["1", "2", "3", "4"]  # written, never acknowledged
        bob.writer.close()
        await stored_offline(server, "bob", 4)
        received = await login_collecting(pool, bob_jid)
        await wait_for(lambda: len(received) == 4)
        assert received == ["1", "2", "3", "4"]  # from offline storage, in order, once
        await pool.close_all()


# -- resumption (§5) -------------------------------------------------------------------------------------


async def test_resume_drops_what_the_client_acked_and_resends_the_rest(
    server: Server, clients: Clients
) -> None:
    """Raw transcript: bob reads three messages, acks one, loses the connection; `<resume h='2'/>` says he
    handled two: the server answers with what it handled and resends the third only.
    """
    alice_jid = await clients.user("alice")
    await clients.user("bob")
    bob, previd = await managed(server, "bob", "phone")
    alice = await clients.login(alice_jid)
    for n in (1, 2, 3):
        alice.send_message(mto=slixmpp.JID("bob@localhost/phone"), mbody=str(n))
    await bob.expect(body(3))
    bob.send(ack(1) + ping(1))
    await bob.expect(b'id="p1"')
    bob.abort()
    (session,) = server.sessions.sessions_of(JID.parse("bob@localhost"))
    await wait_for(lambda: session.detached)
    assert session.available is False  # bob never sent presence; the registry keeps him all the same
    assert online(server, "bob@localhost") == 1

    bob = await authenticated(server, "bob")
    bob.send(resume(previd, 2))
    await bob.expect(f'<resumed xmlns="urn:xmpp:sm:3" previd="{previd}" h="1"/>'.encode())  # the ping
    rest = await bob.expect(re.compile(rb'.*id="p1"', re.DOTALL))  # message 3, then the ping result
    assert bodies(rest.group(0)) == ["3"]
    assert server.sessions.sessions_of(JID.parse("bob@localhost")) == [session]
    assert str(session.jid) == "bob@localhost/phone"
    alice.send_message(mto=slixmpp.JID("bob@localhost/phone"), mbody="4")
    await bob.expect(body(4))
    bob.writer.close()


async def test_a_killed_connection_resumes_and_every_message_arrives_once_in_order(
    server: Server, clients: Clients
) -> None:
    """slixmpp on both sides: bob's TCP connection dies mid-conversation while alice keeps sending."""
    alice_jid = await clients.user("alice")
    bob_jid = await clients.user("bob")
    alice = await clients.login(alice_jid)
    received: list[str] = []

    def collect(client: slixmpp.ClientXMPP) -> None:
        client.add_event_handler("message", lambda message: received.append(message["body"]))

    bob = await clients.login(bob_jid, plugins=["xep_0198"], setup=collect)
    await wait_for(lambda: bob.plugin["xep_0198"].sm_id is not None)
    full_jid = str(bob.boundjid)
    (session,) = server.sessions.sessions_of(JID.parse(bob_jid))
    for n in range(1, 11):
        alice.send_message(mto=slixmpp.JID(bob_jid), mbody=str(n))
    await wait_for(lambda: len(received) >= 3)
    cut(bob)  # mid-conversation: some of 1..10 may still be in flight
    for n in range(11, 21):
        alice.send_message(mto=slixmpp.JID(bob_jid), mbody=str(n))
    await wait_for(lambda: session.detached)

    resumed = asyncio.get_running_loop().create_future()
    bob.add_event_handler("session_resumed", lambda _event: resumed.set_result(True))
    await clients.connect(bob)
    await asyncio.wait_for(resumed, 10)
    await wait_for(lambda: len(received) >= 20)
    await asyncio.sleep(0.1)  # nothing more is coming
    assert received == [str(n) for n in range(1, 21)]
    assert str(bob.boundjid) == full_jid
    assert server.sessions.sessions_of(JID.parse(bob_jid)) == [session]
    assert session.available  # presence survived the outage
    alice.send_message(mto=slixmpp.JID(bob_jid), mbody="after")
    await wait_for(lambda: received[-1:] == ["after"])


async def test_resume_with_an_unknown_id_fails_and_binding_still_works(
    server: Server, clients: Clients
) -> None:
    await clients.user("alice")
    alice = await authenticated(server, "alice")
    alice.send(resume("no-such-session", 0))
    failed = await alice.expect(re.compile(rb"<failed .*?</failed>"))
    assert b"<item-not-found" in failed.group(0)
    alice.send(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    await alice.expect(b"<jid>alice@localhost/")
    alice.writer.close()


async def test_another_user_cannot_resume_a_session(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    await clients.user("mallory")
    alice, previd = await managed(server, "alice")
    alice.abort()
    await wait_for(lambda: any(s.detached for s in server.sessions))
    mallory = await authenticated(server, "mallory")
    mallory.send(resume(previd, 0))
    failed = await mallory.expect(re.compile(rb"<failed .*?</failed>"))
    assert b"<item-not-found" in failed.group(0)
    mallory.writer.close()
    alice = await authenticated(server, "alice")  # alice's session is untouched and still hers
    alice.send(resume(previd, 0))
    await alice.expect(b"<resumed ")
    alice.writer.close()


async def test_resume_before_authentication_is_not_authorized(server: Server) -> None:
    reader, writer = await opened(server)
    writer.write(resume("anything", 0))
    await stream_error(reader, "not-authorized")
    writer.close()


async def test_resume_with_h_above_what_was_sent_is_handled_count_too_high(
    server: Server, clients: Clients
) -> None:
    await clients.user("alice")
    alice, previd = await managed(server, "alice")
    alice.abort()
    await wait_for(lambda: any(s.detached for s in server.sessions))
    alice = await authenticated(server, "alice")
    alice.send(resume(previd, 7))
    data = await stream_error(alice.reader, "undefined-condition")
    assert b'<handled-count-too-high xmlns="urn:xmpp:sm:3" h="7" send-count="0"/>' in data
    alice.writer.close()


async def test_resuming_a_session_whose_connection_looks_alive_replaces_that_connection(
    server: Server, clients: Clients
) -> None:
    alice_jid = await clients.user("alice")
    await clients.user("bob")
    old, previd = await managed(server, "bob")
    new = await authenticated(server, "bob")
    new.send(resume(previd, 0))
    await new.expect(b"<resumed ")
    await stream_error(old.reader, "conflict")
    old.writer.close()
    alice = await clients.login(alice_jid)
    alice.send_message(mto=slixmpp.JID("bob@localhost/raw"), mbody="here")
    await new.expect(body("here"))
    assert online(server, "bob@localhost") == 1
    new.writer.close()


async def test_an_expired_id_fails_and_its_messages_went_offline(tmp_path: Path) -> None:
    config = make_config(tmp_path, stream_management={"resume_timeout": 0.5})
    async with running_server(config) as server:
        pool = Clients(server)
        alice_jid = await pool.user("alice")
        bob_jid = await pool.user("bob")
        alice = await pool.login(alice_jid)
        bob, previd = await managed(server, "bob")
        bob.abort()
        await wait_for(lambda: any(s.detached for s in server.sessions))
        for n in (1, 2, 3):
            alice.send_message(
                mto=slixmpp.JID("bob@localhost/raw"), mbody=str(n)
            )  # queued for the detached session
        await stored_offline(server, "bob", 3)  # not resumed within 0.5 s
        bob = await authenticated(server, "bob")
        bob.send(resume(previd, 0))
        failed = await bob.expect(re.compile(rb"<failed .*?</failed>"))
        assert b"<item-not-found" in failed.group(0)
        bob.writer.close()
        received = await login_collecting(pool, bob_jid)
        await wait_for(lambda: len(received) == 3)
        assert received == ["1", "2", "3"]
        await pool.close_all()


async def test_a_slixmpp_session_not_resumed_in_time_gets_its_messages_at_next_login(tmp_path: Path) -> None:
    config = make_config(tmp_path, stream_management={"resume_timeout": 0.5})
    async with running_server(config) as server:
        pool = Clients(server)
        alice_jid = await pool.user("alice")
        bob_jid = await pool.user("bob")
        alice = await pool.login(alice_jid)
        bob = await pool.login(bob_jid, plugins=["xep_0198"])
        await wait_for(lambda: bob.plugin["xep_0198"].sm_id is not None)
        cut(bob)
        await wait_for(lambda: any(s.detached for s in server.sessions))
        for n in (1, 2, 3):
            alice.send_message(mto=slixmpp.JID(bob_jid), mbody=str(n))  # bob is still "available": queued
        await stored_offline(server, "bob", 3)  # not resumed within 0.5 s
        received = await login_collecting(pool, bob_jid, resource="desk")
        await wait_for(lambda: len(received) == 3)
        assert received == ["1", "2", "3"]
        await pool.close_all()


# -- the end of a session without resumption (§4) --------------------------------------------------------


async def test_unacked_messages_of_a_clean_close_go_to_another_resource(
    server: Server, clients: Clients
) -> None:
    alice_jid = await clients.user("alice")
    bob_jid = await clients.user("bob")
    phone, _previd = await managed(server, "bob", "phone")
    desk = await login_collecting(clients, bob_jid, resource="desk")
    alice = await clients.login(alice_jid)
    alice.send_message(mto=slixmpp.JID("bob@localhost/phone"), mbody="for the phone")
    await phone.expect(body("for the phone"))
    phone.send(b"</stream:stream>")  # closes cleanly without acknowledging it
    final = await phone.rest()
    assert b'<a xmlns="urn:xmpp:sm:3" h="0"/>' in final
    phone.writer.close()
    await wait_for(lambda: desk == ["for the phone"])


async def test_an_unacked_iq_request_bounces_to_its_sender(server: Server, clients: Clients) -> None:
    alice_jid = await clients.user("alice")
    await clients.user("bob")
    bob, _previd = await managed(server, "bob")
    alice = await clients.login(alice_jid)
    iq = alice.make_iq_get(queryxmlns="jabber:iq:version", ito="bob@localhost/raw")
    pending = asyncio.ensure_future(iq.send(timeout=5))
    await bob.expect(b"jabber:iq:version")
    bob.send(b"</stream:stream>")
    await bob.rest()
    bob.writer.close()
    with pytest.raises(IqError) as error:
        await pending
    assert error.value.iq["error"]["condition"] == "recipient-unavailable"


async def test_binding_the_resource_of_a_detached_session_replaces_it(
    server: Server, clients: Clients
) -> None:
    alice_jid = await clients.user("alice")
    bob_jid = await clients.user("bob")
    bob, _previd = await managed(server, "bob", "phone")
    alice = await clients.login(alice_jid)
    alice.send_message(mto=slixmpp.JID("bob@localhost/phone"), mbody="unacked")
    await bob.expect(body("unacked"))
    bob.abort()
    (old,) = server.sessions.sessions_of(JID.parse(bob_jid))
    await wait_for(lambda: old.detached)
    received = await login_collecting(clients, bob_jid, resource="phone")
    await wait_for(lambda: received == ["unacked"])  # the old session's message, via offline storage
    assert old.closed
    (new,) = server.sessions.sessions_of(JID.parse(bob_jid))
    assert new is not old
    await asyncio.sleep(0.1)
    assert received == ["unacked"]


async def test_an_unanswered_ping_detaches_a_resumable_session(tmp_path: Path) -> None:
    config = make_config(tmp_path, c2s={"idle_ping_after": 0.2, "ping_timeout": 0.2})
    async with running_server(config) as server:
        pool = Clients(server)
        await pool.user("alice")
        alice, previd = await managed(server, "alice")
        await stream_error(alice.reader, "connection-timeout")
        alice.writer.close()
        (session,) = server.sessions
        assert session.detached
        alice = await authenticated(server, "alice")
        alice.send(resume(previd, 0))
        await alice.expect(b"<resumed ")
        alice.writer.close()


async def test_shutdown_keeps_the_messages_of_detached_sessions(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_server(config) as server:
        pool = Clients(server)
        alice_jid = await pool.user("alice")
        await pool.user("bob")
        bob, _previd = await managed(server, "bob")
        alice = await pool.login(alice_jid)
        alice.send_message(mto=slixmpp.JID("bob@localhost/raw"), mbody="in flight")
        await bob.expect(body("in flight"))
        bob.abort()
        await wait_for(lambda: any(s.detached for s in server.sessions))
        await pool.close_all()
    async with running_server(config) as server:
        assert await server.storage.offline.count("bob") == 1
