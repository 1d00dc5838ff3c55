"""XEP-0198 resumption anywhere in the cluster (nitro/ops/resume_anywhere.py): two nodes in this process (a
ring of redis-servers and a nats-server of the test's own); a client whose connection died on one node
resumes on the other with every message sent meanwhile, once, in order, and its contacts never see it go;
another user's previd, and a previd whose node is gone, fail with item-not-found."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import slixmpp
from conftest import Clients, wait_for
from nats_servers import NatsServer, nats_server
from redis_servers import RedisServer, redis_servers
from test_cluster_nats import befriend, running_nodes, sees
from test_stream_management import Peer, authenticated, managed, resume

from nitro.c2s.session import ClientSession
from nitro.cluster.wire import decode, encode, subject_of
from nitro.ops import resume_anywhere
from nitro.ops.resume_anywhere import TAKE_TIMEOUT
from nitro.server import Server
from nitro.xmpp.jid import JID

__all__ = ["nats_server", "redis_servers"]

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture
async def nodes(
    tmp_path: Path, redis_servers: list[RedisServer], nats_server: NatsServer
) -> AsyncIterator[list[Clients]]:
    """Two nodes, each with its pool of clients."""
    async with running_nodes(tmp_path, redis_servers, nats_server, ("a", "b")) as pools:
        yield pools


def session_of(server: Server, jid: str) -> ClientSession:
    (session,) = server.sessions.sessions_of(JID.parse(jid))
    assert isinstance(session, ClientSession)
    return session


async def test_a_session_cut_on_one_node_resumes_on_the_other_with_every_message_once(
    nodes: list[Clients],
) -> None:
    a, b = nodes
    alice_jid, bob_jid = await a.user("alice"), await a.user("bob")
    await befriend(a, "alice", "bob")
    alice = await a.login(alice_jid)
    gone: list[str] = []
    alice.add_event_handler("presence_unavailable", lambda p: gone.append(str(p["from"])))
    received: list[str] = []

    def collect(client: slixmpp.ClientXMPP) -> None:
        client.add_event_handler("message", lambda message: received.append(message["body"]))

    bob = await a.login(bob_jid, plugins=["xep_0198"], setup=collect)
    await wait_for(lambda: bob.plugin["xep_0198"].sm_id is not None)
    full_jid = str(bob.boundjid)
    await wait_for(sees(b.server, bob.boundjid), 10)
    on_a = session_of(a.server, bob_jid)
    for n in range(1, 11):
        alice.send_message(mto=slixmpp.JID(bob_jid), mbody=str(n))
    await wait_for(lambda: len(received) >= 3)
    assert bob.transport is not None
    bob.transport.abort()  # the connection dies; node a keeps the session for its resumption
    for n in range(11, 21):
        alice.send_message(mto=slixmpp.JID(bob_jid), mbody=str(n))
    await wait_for(lambda: on_a.detached)

    resumed = asyncio.get_running_loop().create_future()
    bob.add_event_handler("session_resumed", lambda _event: resumed.set_result(True))
    bob.connect("127.0.0.1", b.server.config.c2s.port)  # the other node

    async def meanwhile() -> None:  # sent while the session moves: they follow it, in order
        for n in range(21, 41):
            alice.send_message(mto=slixmpp.JID(full_jid), mbody=str(n))
            await asyncio.sleep(0.01)

    sender = asyncio.create_task(meanwhile())
    await asyncio.wait_for(resumed, 10)
    await sender
    await wait_for(lambda: len(received) >= 40, 10)
    await asyncio.sleep(0.3)  # nothing more is coming
    assert received == [str(n) for n in range(1, 41)]  # none lost, none twice, in order
    assert str(bob.boundjid) == full_jid
    on_b = session_of(b.server, bob_jid)
    assert on_b.established
    assert on_b.available  # presence survived the move
    assert on_a.forward is not None  # a forwards what stale routes still bring it, then forgets it
    assert full_jid not in gone  # alice never saw bob go
    alice.send_message(mto=slixmpp.JID(bob_jid), mbody="after")
    await wait_for(lambda: received[-1:] == ["after"], 10)
    assert received.count("after") == 1
    assert a.server.cluster is not None
    view = a.server.cluster.view
    await wait_for(lambda: (r := view.resource(JID.parse(full_jid))) is not None and r.node == "b", 5)


async def test_another_user_s_previd_is_item_not_found_and_the_session_stays_its_owner_s(
    nodes: list[Clients],
) -> None:
    a, b = nodes
    await a.user("alice")
    await a.user("mallory")
    alice, previd = await managed(a.server, "alice")
    alice.abort()
    await wait_for(lambda: any(s.detached for s in a.server.sessions))
    await wait_for(lambda: bool(b.server.sessions.resources(JID.parse("alice@localhost"))), 10)
    mallory = await authenticated(b.server, "mallory")
    mallory.send(resume(previd, 0))
    failed = await mallory.expect(re.compile(rb"<failed .*?</failed>"))
    assert b"<item-not-found" in failed.group(0)
    mallory.writer.close()
    assert b.server.cluster is not None  # the owner checks the user too, whatever a member asks for
    ask = {"t": "sm-take", "previd": previd, "user": "mallory@localhost", "to": "b"}
    reply = await b.server.cluster.link.request(subject_of("test", "a"), encode(ask), 2.0)
    assert decode(reply) == {"r": "not-found"}
    (kept,) = a.server.sessions.sessions_of(JID.parse("alice@localhost"))
    assert isinstance(kept, ClientSession)
    assert kept.detached  # still a's, untouched
    assert kept.forward is None
    alice = await authenticated(b.server, "alice")  # alice herself may take it to b
    alice.send(resume(previd, 0))
    await alice.expect(b"<resumed ")
    alice.writer.close()


async def test_a_previd_whose_node_is_gone_fails_fast(nodes: list[Clients]) -> None:
    a, b = nodes
    await a.user("alice")
    alice, previd = await managed(a.server, "alice")
    alice.abort()
    await wait_for(lambda: any(s.detached for s in a.server.sessions))
    await wait_for(lambda: bool(b.server.sessions.resources(JID.parse("alice@localhost"))), 10)
    assert a.server.cluster is not None
    await a.server.cluster.link.close()  # a is cut off: it answers nobody (b has not noticed yet)
    peer: Peer = await authenticated(b.server, "alice")
    started = time.monotonic()
    peer.send(resume(previd, 0))
    failed = await peer.expect(re.compile(rb"<failed .*?</failed>"))
    assert b"<item-not-found" in failed.group(0)
    assert time.monotonic() - started < TAKE_TIMEOUT  # no responders: at once, not after the wait
    peer.send(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    await peer.expect(b"<jid>alice@localhost/")  # a new session instead
    peer.writer.close()


async def test_a_hand_over_never_confirmed_is_taken_back_with_what_came_meanwhile(
    nodes: list[Clients], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resume_anywhere, "CONFIRM_TIMEOUT", 1.0)
    a, b = nodes
    await a.user("alice")
    bob_jid = await a.user("bob")
    alice, previd = await managed(a.server, "alice")
    alice.abort()
    await wait_for(lambda: any(s.detached for s in a.server.sessions))
    session = session_of(a.server, "alice@localhost")
    assert b.server.cluster is not None  # b asks for the session, then says nothing more (it died)
    ask = {"t": "sm-take", "previd": previd, "user": "alice@localhost", "to": "b"}
    reply = decode(await b.server.cluster.link.request(subject_of("test", "a"), encode(ask), 2.0))
    assert reply["r"] == "ok"
    assert reply["session"]["sm"]["id"] == previd
    assert session.forward is not None  # handed over: a keeps what comes for it
    bob = await a.login(bob_jid)
    bob.send_message(mto=slixmpp.JID("alice@localhost/raw"), mbody="meanwhile", mtype="chat")
    await wait_for(lambda: session.detached, 5)  # no confirmation: a's again
    peer = await authenticated(a.server, "alice")
    peer.send(resume(previd, 0))
    await peer.expect(b"<resumed ")
    await peer.expect(b"<body>meanwhile</body>")  # kept during the hand-over, queued again
    peer.writer.close()
