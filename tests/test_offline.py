"""Offline messages (XEP-0160, XEP-0203) as transcripts: alice writes to offline bob, bob logs in later."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from typing import Any

import slixmpp
from conftest import DOMAIN, Clients, make_config, wait_for
from test_message import condition, errors_of, online, roundtrip, send

from nitro.server import Server, running_server

DELAY = "{urn:xmpp:delay}delay"


async def stored(server: Server, username: str) -> int:
    return await server.storage.offline.count(username)


def stamp_of(message: Any) -> datetime.datetime:
    delay = message.xml.find(DELAY)
    assert delay is not None, "no XEP-0203 delay"
    return datetime.datetime.fromisoformat(delay.get("stamp"))


async def test_three_messages_wait_for_bob_and_arrive_in_order(server: Server, clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)

    for number in (1, 2, 3):
        send(alice, bob_jid, f"message {number}", id_=f"off-{number}")
    await roundtrip(alice)
    assert await stored(server, "bob") == 3

    bob, inbox = await online(clients, bob_jid)

    await wait_for(lambda: len(inbox) == 3)
    assert [m["body"] for m in inbox] == ["message 1", "message 2", "message 3"]
    assert [m["id"] for m in inbox] == ["off-1", "off-2", "off-3"]
    after = datetime.datetime.now(datetime.UTC)
    for message in inbox:
        assert str(message["from"]) == str(alice.boundjid)
        delay = message.xml.find(DELAY)
        assert delay.get("from") == DOMAIN
        assert delay.text == "Offline Storage"
        assert before <= stamp_of(message) <= after
    await roundtrip(bob)  # the delivery (and deletion) ran while the server handled bob's presence
    assert await stored(server, "bob") == 0

    second, second_inbox = await online(clients, f"{bob_jid}/second")
    await roundtrip(second)
    assert second_inbox == []


async def test_offline_messages_survive_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_server(config) as server:
        pool = Clients(server)
        try:
            alice_jid, bob_jid = await pool.user("alice"), await pool.user("bob")
            alice, _ = await online(pool, alice_jid)
            send(alice, bob_jid, "before the restart", id_="r1")
            send(alice, bob_jid, "still before", id_="r2")
            await roundtrip(alice)
        finally:
            await pool.close_all()

    async with running_server(config) as server:
        pool = Clients(server)
        try:
            bob, inbox = await online(pool, bob_jid)
            await wait_for(lambda: len(inbox) == 2)
            assert [m["body"] for m in inbox] == ["before the restart", "still before"]
            await roundtrip(bob)
            assert await stored(server, "bob") == 0
        finally:
            await pool.close_all()


async def test_a_full_queue_refuses_the_next_message(tmp_path: Path) -> None:
    # XEP-0160 §2 step 3: a full offline queue answers <service-unavailable/> (Prosody does the same).
    async with running_server(make_config(tmp_path, offline={"quota": 2})) as server:
        pool = Clients(server)
        try:
            alice_jid, bob_jid = await pool.user("alice"), await pool.user("bob")
            alice, _ = await online(pool, alice_jid)
            errors = errors_of(alice)

            for number in (1, 2, 3):
                send(alice, bob_jid, f"message {number}", id_=f"q-{number}")

            await wait_for(lambda: len(errors) == 1)
            assert errors[0]["id"] == "q-3"
            assert condition(errors[0]) == "service-unavailable"
            assert await stored(server, "bob") == 2

            _bob, inbox = await online(pool, bob_jid)
            await wait_for(lambda: len(inbox) == 2)
            assert [m["body"] for m in inbox] == ["message 1", "message 2"]
        finally:
            await pool.close_all()


async def test_a_negative_priority_session_gets_no_offline_messages(server: Server, clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    send(alice, bob_jid, "first", id_="n1")
    await roundtrip(alice)

    hidden, hidden_inbox = await online(clients, f"{bob_jid}/hidden", priority=-1)
    await roundtrip(hidden)
    assert hidden_inbox == []
    assert await stored(server, "bob") == 1

    # RFC 6121 §8.5.2.2: a negative-priority resource does not count as available for the bare JID.
    send(alice, bob_jid, "second", id_="n2")
    await roundtrip(alice)
    assert await stored(server, "bob") == 2
    await roundtrip(hidden)
    assert hidden_inbox == []

    _desk, desk_inbox = await online(clients, f"{bob_jid}/desk", priority=0)
    await wait_for(lambda: len(desk_inbox) == 2)
    assert [m["body"] for m in desk_inbox] == ["first", "second"]


async def test_two_resources_coming_online_together_share_one_delivery(
    server: Server, clients: Clients
) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    for number in (1, 2, 3):
        send(alice, bob_jid, f"message {number}", id_=f"c-{number}")
    await roundtrip(alice)

    (one, one_inbox), (two, two_inbox) = await asyncio.gather(
        online(clients, f"{bob_jid}/one"), online(clients, f"{bob_jid}/two")
    )

    await wait_for(lambda: len(one_inbox) + len(two_inbox) >= 3)
    await roundtrip(one)
    await roundtrip(two)
    assert await stored(server, "bob") == 0
    bodies = sorted(m["body"] for m in one_inbox + two_inbox)
    assert bodies == ["message 1", "message 2", "message 3"]


async def test_a_message_to_a_gone_resource_of_an_offline_user_is_stored(
    server: Server, clients: Clients
) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)

    send(alice, f"{bob_jid}/phone", "for whichever comes first")
    await roundtrip(alice)

    assert await stored(server, "bob") == 1


async def test_chat_states_and_no_store_hints_are_not_stored(server: Server, clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    errors = errors_of(alice)

    # XEP-0160 §3: a chat message carrying only a chat state (XEP-0085) is not stored.
    alice.send_raw(
        f"<message to='{bob_jid}' type='chat' id='cs'><active xmlns='http://jabber.org/protocol/chatstates'/>"
        "</message>"
    )
    # XEP-0334: <no-store/> asks the server not to keep the message for later delivery.
    alice.send_raw(
        f"<message to='{bob_jid}' type='chat' id='ns'><body>ephemeral</body>"
        "<no-store xmlns='urn:xmpp:hints'/></message>"
    )
    # RFC 6121 §8.5.2.2.1: a headline for an offline user is dropped.
    send(alice, bob_jid, "breaking news", mtype="headline")
    await roundtrip(alice)

    assert await stored(server, "bob") == 0
    assert errors == []


async def test_a_chat_with_body_and_chat_state_is_stored(server: Server, clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)

    alice.send_raw(
        f"<message to='{bob_jid}' type='chat' id='b'><body>hi</body>"
        "<active xmlns='http://jabber.org/protocol/chatstates'/></message>"
    )
    await roundtrip(alice)

    assert await stored(server, "bob") == 1


async def test_the_server_advertises_msgoffline(clients: Clients) -> None:
    alice, _ = await online(clients, await clients.user("alice"))

    info = await alice.plugin["xep_0030"].get_info(jid=slixmpp.JID(DOMAIN), timeout=5)

    assert "msgoffline" in info["disco_info"]["features"]
