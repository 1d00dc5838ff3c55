"""Chatrooms through a running Nitro (slixmpp's XEP-0045 plugin on the client side): creating, entering,
presence with status codes, nickname changes, subject, messages, private messages, disco."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import Clients, result_of
from muc_helpers import CLIENT_PLUGINS, MUC, codes, muc_config, room_jid, running_muc, user
from slixmpp import JID
from slixmpp.exceptions import IqError, PresenceError

from nitro.config import Config
from nitro.server import Server


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return muc_config(tmp_path)


async def instant_room(client: Any, name: str, nick: str) -> Any:
    """Create `name` and accept the default configuration (XEP-0045 §10.1.2)."""
    presence, _subject, _occupants, _history = await client.plugin["xep_0045"].join_muc_wait(
        room_jid(name), nick, maxstanzas=0, timeout=10
    )
    assert {110, 201} <= codes(presence)
    form = client.plugin["xep_0004"].make_form(ftype="submit")
    await client.plugin["xep_0045"].set_room_config(room_jid(name), form)
    return presence


async def test_create_join_talk_leave(server: Server, clients: Clients) -> None:
    async with running_muc(server):
        alice, alice_in = await user(clients, "alice")
        bob, bob_in = await user(clients, "bob")
        await instant_room(alice, "lobby", "Alice")
        presence, subject, occupants, _ = await bob.plugin["xep_0045"].join_muc_wait(
            room_jid("lobby"), "Bob", timeout=10
        )
        assert 110 in codes(presence)
        assert 170 in codes(presence)
        assert presence["muc"]["role"] == "participant"
        assert presence["muc"]["affiliation"] == "none"
        assert f"lobby@{MUC}/Alice" in [str(o["from"]) for o in occupants]
        assert not subject["subject"]
        assert presence["occupant-id"]["id"]
        seen = await alice_in.wait(lambda s: s["type"] != "error" and str(s["from"]) == f"lobby@{MUC}/Bob")
        assert seen["muc"]["role"] == "participant"
        # semi-anonymous by default: Alice is the owner (a moderator) and sees Bob's real JID
        assert str(seen["muc"]["jid"]).startswith("bob@localhost/")

        bob.send_message(mto=room_jid("lobby"), mbody="hello all", mtype="groupchat")
        got = await alice_in.wait(lambda s: s.name == "message" and s["body"] == "hello all")
        assert str(got["from"]) == f"lobby@{MUC}/Bob"
        assert got["stanza_id"]["by"] == f"lobby@{MUC}"
        assert got["stanza_id"]["id"]
        assert got["occupant-id"]["id"] == presence["occupant-id"]["id"]
        echo = await bob_in.wait(lambda s: s.name == "message" and s["body"] == "hello all")
        assert echo["stanza_id"]["id"] == got["stanza_id"]["id"]

        bob.plugin["xep_0045"].leave_muc(room_jid("lobby"), "Bob")
        gone = await alice_in.wait(lambda s: s.name == "presence" and s["type"] == "unavailable")
        assert str(gone["from"]) == f"lobby@{MUC}/Bob"


async def test_nickname_conflict_and_change(server: Server, clients: Clients) -> None:
    async with running_muc(server):
        alice, alice_in = await user(clients, "alice")
        bob, _bob_in = await user(clients, "bob")
        await instant_room(alice, "lobby", "Alice")
        with pytest.raises(PresenceError) as taken:
            await bob.plugin["xep_0045"].join_muc_wait(room_jid("lobby"), "alice", timeout=10)
        assert taken.value.condition == "conflict"
        await bob.plugin["xep_0045"].join_muc_wait(room_jid("lobby"), "Bob", timeout=10)
        alice_in.clear()
        bob.send_presence(pto=f"lobby@{MUC}/Robert")
        left = await alice_in.wait(lambda s: s.name == "presence" and s["type"] == "unavailable")
        assert 303 in codes(left)
        assert left["muc"]["item_nick"] == "Robert"
        back = await alice_in.wait(lambda s: s.name == "presence" and str(s["from"]) == f"lobby@{MUC}/Robert")
        assert back["type"] != "unavailable"


async def test_subject_private_message_and_disco(server: Server, clients: Clients) -> None:
    async with running_muc(server):
        alice, alice_in = await user(clients, "alice")
        bob, bob_in = await user(clients, "bob")
        await instant_room(alice, "lobby", "Alice")
        await bob.plugin["xep_0045"].join_muc_wait(room_jid("lobby"), "Bob", timeout=10)
        alice.plugin["xep_0045"].set_subject(room_jid("lobby"), "Quarterly figures")
        subject = await bob_in.wait(lambda s: s.name == "message" and s["subject"] == "Quarterly figures")
        assert str(subject["from"]) == f"lobby@{MUC}/Alice"
        # participants may not change the subject by default (§8.1)
        bob.plugin["xep_0045"].set_subject(room_jid("lobby"), "mine")
        refused = await bob_in.wait(lambda s: s.name == "message" and s["type"] == "error")
        assert refused["error"]["condition"] == "forbidden"

        bob.send_message(mto=JID(f"lobby@{MUC}/Alice"), mbody="psst", mtype="chat")
        private = await alice_in.wait(lambda s: s.name == "message" and s["body"] == "psst")
        assert str(private["from"]) == f"lobby@{MUC}/Bob"
        assert private["type"] == "chat"
        bob.send_message(mto=JID(f"lobby@{MUC}/Nobody"), mbody="?", mtype="chat")
        missing = await bob_in.wait(lambda s: s.name == "message" and s["type"] == "error")
        assert missing["error"]["condition"] == "item-not-found"

        info = await result_of(bob.plugin["xep_0030"].get_info(jid=room_jid("lobby"), timeout=5))
        features = set(info["disco_info"]["features"])
        assert {"http://jabber.org/protocol/muc", "urn:xmpp:mam:2", "muc_public", "muc_temporary"} <= features
        assert {"urn:xmpp:occupant-id:0", "urn:xmpp:sid:0", "muc_semianonymous", "muc_open"} <= features
        service = await result_of(bob.plugin["xep_0030"].get_info(jid=JID(MUC), timeout=5))
        assert ("conference", "text") in {(i[0], i[1]) for i in service["disco_info"]["identities"]}
        items = await result_of(bob.plugin["xep_0030"].get_items(jid=JID(MUC), timeout=5))
        assert [str(i[0]) for i in items["disco_items"]["items"]] == [f"lobby@{MUC}"]


async def test_iq_to_an_occupant_is_relayed(server: Server, clients: Clients) -> None:
    """An occupant asks another for its software version and its vCard through the room: the answers come
    back from the occupant's room JID, never revealing the real JID (semi-anonymous room)."""
    async with running_muc(server):
        alice, _ = await user(clients, "alice")
        bob = await clients.login(
            await clients.user("bob"), plugins=(*CLIENT_PLUGINS, "xep_0092", "xep_0054")
        )
        vcard = bob.plugin["xep_0054"].make_vcard()
        vcard["FN"] = "Bob Builder"
        await bob.plugin["xep_0054"].publish_vcard(vcard)
        await instant_room(alice, "lobby", "Alice")
        await bob.plugin["xep_0045"].join_muc_wait(room_jid("lobby"), "Bob", timeout=10)
        carol, _ = await user(clients, "carol")
        await carol.plugin["xep_0045"].join_muc_wait(room_jid("lobby"), "Carol", timeout=10)
        version = await carol.plugin["xep_0092"].get_version(JID(f"lobby@{MUC}/Bob"), timeout=10)
        assert str(version["from"]) == f"lobby@{MUC}/Bob"
        assert version["software_version"]["name"] == "Slixmpp"  # Bob's client answered
        card = await carol.plugin["xep_0054"].get_vcard(JID(f"lobby@{MUC}/Bob"), timeout=10)
        assert card["vcard_temp"]["FN"] == "Bob Builder"
        with pytest.raises(IqError) as missing:
            await carol.plugin["xep_0092"].get_version(JID(f"lobby@{MUC}/Nobody"), timeout=10)
        assert missing.value.condition == "item-not-found"
