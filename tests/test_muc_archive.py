"""Chatroom memory through a running Nitro: persistent rooms survive a plugin restart, history on entry
(with its hard cap), MAM on the room JID with RSM paging, XEP-0410 self-ping, and an occupant whose
client vanishes without leaving."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import Clients, result_of
from muc_helpers import MUC, codes, create_room, join_error, muc_config, room_jid, running_muc, user
from slixmpp import JID
from slixmpp.exceptions import IqError
from sqlalchemy import text

from nitro.config import Config
from nitro.server import Server
from nitro.storage.sql import create_engine


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return muc_config(tmp_path, history_max=5)


async def test_persistent_room_survives_a_restart(server: Server, clients: Clients) -> None:
    alice, _ = await user(clients, "alice")
    bob, _ = await user(clients, "bob")
    async with running_muc(server):
        fields = {"persistentroom": True, "membersonly": True, "roomname": "Rates desk"}
        await create_room(alice, "rates", "Alice", fields)
        await alice.plugin["xep_0045"].set_affiliation(room_jid("rates"), "member", jid=JID("bob@localhost"))
        await create_room(alice, "scratch", "Alice")  # temporary: gone with the plugin
    alice.plugin["xep_0045"].rooms.clear()
    async with running_muc(server):
        items = await result_of(bob.plugin["xep_0030"].get_items(jid=JID(MUC), timeout=5))
        assert [(str(i[0]), i[2]) for i in items["disco_items"]["items"]] == [(f"rates@{MUC}", "Rates desk")]
        await bob.plugin["xep_0045"].join_muc_wait(room_jid("rates"), "Bob", timeout=10)  # still a member
        carol, _ = await user(clients, "carol")
        assert await join_error(carol, "rates", "Carol") == "registration-required"  # still members-only
        await alice.plugin["xep_0045"].join_muc_wait(room_jid("rates"), "Alice", timeout=10)
        owners = await alice.plugin["xep_0045"].get_affiliation_list(room_jid("rates"), "owner")
        assert owners == ["alice@localhost"]


async def test_history_cap_and_mam(server: Server, clients: Clients) -> None:
    async with running_muc(server):
        alice, _ = await user(clients, "alice")
        bob, _ = await user(clients, "bob")
        await create_room(alice, "lobby", "Alice")
        for n in range(8):
            alice.send_message(mto=room_jid("lobby"), mbody=f"m{n}", mtype="groupchat")
        await asyncio.sleep(0.5)
        # a history request of 10^9 stanzas gets the service's cap (history_max = 5)
        _p, _s, _o, history = await bob.plugin["xep_0045"].join_muc_wait(
            room_jid("lobby"), "Bob", maxstanzas=10**9, timeout=10
        )
        assert [m["body"] for m in history] == ["m3", "m4", "m5", "m6", "m7"]
        assert all(m["delay"]["stamp"] for m in history)
        bob.plugin["xep_0045"].leave_muc(room_jid("lobby"), "Bob")
        _p, _s, _o, few = await bob.plugin["xep_0045"].join_muc_wait(
            room_jid("lobby"), "Bob2", maxstanzas=2, timeout=10
        )
        assert [m["body"] for m in few] == ["m6", "m7"]

        mam = bob.plugin["xep_0313"]
        first = [m async for m in mam.iterate(jid=room_jid("lobby"), rsm={"max": 3}, total=3)]
        assert [m["mam_result"]["forwarded"]["stanza"]["body"] for m in first] == ["m0", "m1", "m2"]
        everything = [m async for m in mam.iterate(jid=room_jid("lobby"), rsm={"max": 3})]
        bodies = [m["mam_result"]["forwarded"]["stanza"]["body"] for m in everything]
        assert bodies == [f"m{n}" for n in range(8)]
        ids = [m["mam_result"]["id"] for m in everything]
        assert len(set(ids)) == 8


async def test_self_ping_and_vanished_client(server: Server, clients: Clients) -> None:
    async with running_muc(server):
        alice, alice_in = await user(clients, "alice")
        bob, _ = await user(clients, "bob")
        await create_room(alice, "lobby", "Alice")
        await bob.plugin["xep_0045"].join_muc_wait(room_jid("lobby"), "Bob", timeout=10)
        ping = bob.plugin["xep_0199"]
        await ping.send_ping(JID(f"lobby@{MUC}/Bob"), timeout=5)  # XEP-0410: still joined
        carol, _ = await user(clients, "carol")
        with pytest.raises(IqError) as outside:
            await carol.plugin["xep_0199"].send_ping(JID(f"lobby@{MUC}/Bob"), timeout=5)
        assert outside.value.condition == "not-acceptable"
        # Bob's connection dies without an unavailable presence: the core tells the room he is gone
        bob.abort()
        gone = await alice_in.wait(
            lambda s: s["type"] == "unavailable" and str(s["from"]) == f"lobby@{MUC}/Bob", timeout=10
        )
        assert gone["muc"]["role"] == "none"


async def test_message_not_archived_is_not_sent(server: Server, clients: Clients, tmp_path: Path) -> None:
    """The archive fails (its table is gone): the sender gets <internal-server-error/> (wait) and no
    occupant sees the message, since each message is stored before the room broadcasts it."""
    async with running_muc(server):
        alice, alice_in = await user(clients, "alice")
        bob, bob_in = await user(clients, "bob")
        await create_room(alice, "lobby", "Alice")
        await bob.plugin["xep_0045"].join_muc_wait(room_jid("lobby"), "Bob", timeout=10)
        alice.send_message(mto=room_jid("lobby"), mbody="kept", mtype="groupchat")
        await bob_in.wait(lambda s: s.name == "message" and s["body"] == "kept")
        engine = create_engine(server.config.storage.dsn)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("DROP TABLE muc_archive"))
        finally:
            await engine.dispose()
        alice.send_message(mto=room_jid("lobby"), mbody="lost", mtype="groupchat")
        refused = await alice_in.wait(lambda s: s.name == "message" and s["type"] == "error")
        assert (refused["error"]["condition"], refused["error"]["type"]) == ("internal-server-error", "wait")
        alice.send_message(mto=room_jid("lobby"), mbody="after", mtype="groupchat")
        await alice_in.wait(lambda s: s.name == "message" and s["type"] == "error")
        assert not [s for s in bob_in.stanzas if s.name == "message" and s["body"] in ("lost", "after")]
        # presence and other traffic still flows
        bob.plugin["xep_0045"].leave_muc(room_jid("lobby"), "Bob")
        await alice_in.wait(lambda s: s["type"] == "unavailable" and str(s["from"]) == f"lobby@{MUC}/Bob")


async def test_plugin_stop_tells_occupants(server: Server, clients: Clients) -> None:
    """The plugin stopping (its task cancelled, as the server does at shutdown) sends every occupant its
    unavailable presence with status 332 (XEP-0045 §15.6: system shutdown)."""
    alice, alice_in = await user(clients, "alice")
    async with running_muc(server):
        await create_room(alice, "lobby", "Alice")
    gone = await alice_in.wait(
        lambda s: s["type"] == "unavailable" and str(s["from"]) == f"lobby@{MUC}/Alice"
    )
    assert {110, 332} <= codes(gone)
