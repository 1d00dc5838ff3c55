"""Proof of reading for clients without stream management (nitro/c2s/read_proof.py): the bookkeeping fed by
hand, then a real server: a client that answers pings keeps the tracked list short, one that never answers
gets one ping at a time, and what it never proved it read is stored offline when the server closes it."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import slixmpp
from conftest import DOMAIN, Clients, make_config, raw_stream, read_until, started_server, wait_for
from lxml import etree
from upgrade_node import HEADER, plain

from nitro.c2s.read_proof import PROVE_AFTER, PROVE_AGE, ReadProof, kept_offline
from nitro.c2s.session import ClientSession
from nitro.server import Server

PING_TIMEOUT = 60.0


def msg(text: str, kind: str | None = "chat") -> etree._Element:
    element = etree.Element("{jabber:client}message", to=f"bob@{DOMAIN}/pc")
    if kind is not None:
        element.set("type", kind)
    etree.SubElement(element, "{jabber:client}body").text = text
    return element


def test_only_what_offline_storage_keeps_is_tracked() -> None:
    assert kept_offline(msg("x"))
    assert kept_offline(msg("x", None))  # normal
    assert kept_offline(msg("x", "normal"))
    assert not kept_offline(msg("x", "groupchat"))
    assert not kept_offline(msg("x", "headline"))
    assert not kept_offline(msg("x", "error"))
    states = etree.Element("{jabber:client}message", type="chat")
    etree.SubElement(states, "{http://jabber.org/protocol/chatstates}composing")
    assert not kept_offline(states)  # XEP-0160 §3
    assert not kept_offline(etree.Element("{jabber:client}iq", type="get"))


def test_a_ping_is_due_after_enough_messages_and_one_at_a_time() -> None:
    proof = ReadProof()
    for n in range(PROVE_AFTER - 1):
        proof.written(msg(f"m{n}"), 100.0)
    assert not proof.due(100.0, PING_TIMEOUT)
    proof.written(msg("last"), 100.0)
    assert proof.due(100.0, PING_TIMEOUT)
    proof.pinged(100.0)
    for n in range(3 * PROVE_AFTER):  # more arrive while the ping is awaited: no second ping (no flood)
        proof.written(msg(f"more{n}"), 101.0)
        assert not proof.due(101.0, PING_TIMEOUT)
    assert proof.unproven == 4 * PROVE_AFTER
    proof.proven()  # the answer proves what was written before the ping, not after
    assert proof.unproven == 3 * PROVE_AFTER
    left = [m.findtext("{jabber:client}body") for m in proof.take()]
    assert left == [f"more{n}" for n in range(3 * PROVE_AFTER)]
    assert proof.unproven == 0


def test_a_ping_is_due_once_the_oldest_message_waited_long_enough() -> None:
    proof = ReadProof()
    assert proof.deadline(PING_TIMEOUT) is None
    proof.written(msg("one"), 10.0)
    assert not proof.due(10.0 + PROVE_AGE - 1, PING_TIMEOUT)
    assert proof.deadline(PING_TIMEOUT) == 10.0 + PROVE_AGE
    assert proof.due(10.0 + PROVE_AGE, PING_TIMEOUT)
    proof.pinged(50.0)
    assert not proof.due(50.0 + PING_TIMEOUT - 1, PING_TIMEOUT)
    assert proof.due(50.0 + PING_TIMEOUT, PING_TIMEOUT)  # unanswered in time: the next ping covers all
    proof.pinged(50.0 + PING_TIMEOUT)
    proof.proven()
    assert proof.unproven == 0


async def test_waiting_for_the_answer_is_bounded() -> None:
    proof = ReadProof()
    assert await proof.answered(0.05)  # nothing awaited
    proof.written(msg("x"), 0.0)
    proof.pinged(0.0)
    assert not await proof.answered(0.05)
    asyncio.get_running_loop().call_later(0.05, proof.proven)
    assert await proof.answered(2.0)
    assert proof.unproven == 0


async def stored_offline(server: Server, user: str, count: int) -> None:
    for _ in range(100):
        if len(await server.storage.offline.list(user)) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} messages stored offline for {user}")


def unproven(session: ClientSession) -> int:
    return 0 if session.proof is None else session.proof.unproven


def bob_session(server: Server) -> ClientSession:
    sessions = [s for s in server.sessions if isinstance(s, ClientSession) and s.jid.local == "bob"]
    assert len(sessions) == 1
    return sessions[0]


async def test_a_client_answering_pings_keeps_the_tracked_list_short(
    clients: Clients, server: Server
) -> None:
    alice = await clients.login(await clients.user("alice"))
    bob = await clients.login(await clients.user("bob"))  # slixmpp with XEP-0199: answers pings
    got: list[str] = []
    bob.add_event_handler("message", lambda m: got.append(str(m["body"])))
    for n in range(3 * PROVE_AFTER + 5):
        alice.send_message(mto=slixmpp.JID(f"bob@{DOMAIN}"), mbody=f"n{n}", mtype="chat")
    await wait_for(lambda: len(got) == 3 * PROVE_AFTER + 5, 20)
    await wait_for(lambda: unproven(bob_session(server)) < PROVE_AFTER)
    assert len(set(got)) == len(got)


async def bound_raw(
    server: Server, user: str, resource: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await raw_stream(server, tls=True)
    writer.write(HEADER)
    await read_until(reader, b"</stream:features>")
    writer.write(plain(user))
    await read_until(reader, b"<success")
    writer.write(HEADER)
    await read_until(reader, b"</stream:features>")
    writer.write(
        f"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        f"<resource>{resource}</resource></bind></iq><presence/>".encode()
    )
    await read_until(reader, b'id="b1"')
    return reader, writer


async def test_a_client_that_never_answers_gets_one_ping_and_loses_nothing(tmp_path: Path) -> None:
    """One ping at a time, never a flood; a silent client that does not answer it within `[c2s] ping_timeout`
    is closed (connection-timeout), and the messages it never proved it read are stored offline."""
    config = make_config(tmp_path, c2s={"ping_timeout": 1.0})
    async with started_server(config) as server:
        pool = Clients(server)
        try:
            alice = await pool.login(await pool.user("alice"))
            await pool.user("bob")
            reader, writer = await bound_raw(server, "bob", "raw")
            sent = [f"r{n}" for n in range(2 * PROVE_AFTER + 5)]
            for text in sent:
                alice.send_message(mto=slixmpp.JID(f"bob@{DOMAIN}/raw"), mbody=text, mtype="chat")
            data = await read_until(reader, b"</stream:stream>", 20)
            assert b"connection-timeout" in data
            assert data.count(b"urn:xmpp:ping") == 1  # the one awaited ping, however many messages follow
            writer.close()
            await stored_offline(server, "bob", len(sent))  # re-routed once the stream is closed
            got: list[str] = []

            def record(client: slixmpp.ClientXMPP) -> None:  # before it logs in: the flush follows at once
                client.add_event_handler("message", lambda m: got.append(str(m["body"])))

            await pool.login(f"bob@{DOMAIN}", setup=record)
            await wait_for(lambda: len(got) >= len(sent), 15)
            assert got == sent, " ".join(got)
        finally:
            await pool.close_all()


async def test_a_ping_answered_with_an_error_counts_as_proof(clients: Clients, server: Server) -> None:
    alice = await clients.login(await clients.user("alice"))
    await clients.user("bob")
    reader, writer = await bound_raw(server, "bob", "raw")
    for n in range(PROVE_AFTER):
        alice.send_message(mto=slixmpp.JID(f"bob@{DOMAIN}/raw"), mbody=f"e{n}", mtype="chat")
    data = await read_until(reader, b"urn:xmpp:ping", 10)
    ping_id = re.findall(rb'<iq [^>]*id="([^"]+)"', data)[-1].decode()
    assert bob_session(server).proof is not None
    writer.write(
        f"<iq type='error' id='{ping_id}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/><error type='cancel'>"
        "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>".encode()
    )
    await wait_for(lambda: bob_session(server).proof is None)
    writer.close()
