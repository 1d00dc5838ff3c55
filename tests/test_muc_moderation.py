"""Chatroom rights through a running Nitro: affiliations and roles (kick, ban, voice, voice requests),
members-only, password, moderated rooms, invitations, destruction, and every refused bad input."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import Clients
from muc_helpers import (
    MUC,
    codes,
    configure,
    create_room,
    join_error,
    muc_config,
    room_jid,
    running_muc,
    user,
)
from slixmpp import JID
from slixmpp.exceptions import IqError

from nitro.config import Config
from nitro.server import Server


def _error_from(nick: str, stanza: Any) -> bool:
    return bool(stanza.xml.get("type") == "error" and stanza.xml.get("from", "").endswith(nick))


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return muc_config(tmp_path, max_nick_length=20, max_room_id_bytes=32, history_max=5)


async def test_entry_refusals(server: Server, clients: Clients) -> None:
    """Members-only without membership, a wrong password, a banned user, bad and taken nicknames, a room
    name over the limit."""
    async with running_muc(server):
        alice, _ = await user(clients, "alice")
        bob, _ = await user(clients, "bob")
        muc = alice.plugin["xep_0045"]
        await create_room(alice, "club", "Alice", {"membersonly": True})
        assert await join_error(bob, "club", "Bob") == "registration-required"
        await muc.set_affiliation(room_jid("club"), "member", jid=JID("bob@localhost"))
        await bob.plugin["xep_0045"].join_muc_wait(room_jid("club"), "Bob", timeout=10)

        await create_room(alice, "vault", "Alice", {"passwordprotectedroom": True, "roomsecret": "s3cret"})
        assert await join_error(bob, "vault", "Bob") == "not-authorized"
        assert await join_error(bob, "vault", "Bob", password="wrong") == "not-authorized"
        await bob.plugin["xep_0045"].join_muc_wait(room_jid("vault"), "Bob", password="s3cret", timeout=10)

        await create_room(alice, "open", "Alice")
        await muc.set_affiliation(room_jid("open"), "outcast", jid=JID("bob@localhost"))
        assert await join_error(bob, "open", "Bob") == "forbidden"

        carol, carol_in = await user(clients, "carol")
        assert await join_error(carol, "open", "alice") == "conflict"  # taken (case-insensitively)
        # illegal characters: what RFC 8266 would rewrite (the room refuses), what no JID may hold (the
        # core refuses before the room sees it)
        for nick, condition in (("\u2163x", "not-acceptable"), ("bad\u200bnick", "jid-malformed")):
            carol.send_raw(
                f"<presence to='open@{MUC}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
            )
            refused = await carol_in.wait(partial(_error_from, nick))
            assert refused["error"]["condition"] == condition
        assert await join_error(carol, "open", " Carol") == "not-acceptable"  # leading space
        assert await join_error(carol, "open", "c" * 21) == "not-acceptable"  # over max_nick_length
        assert await join_error(carol, "x" * 33, "Carol") == "not-acceptable"  # room name over 32 bytes


async def test_kick_ban_voice_and_requests(server: Server, clients: Clients) -> None:
    async with running_muc(server):
        alice, alice_in = await user(clients, "alice")
        bob, bob_in = await user(clients, "bob")
        carol, carol_in = await user(clients, "carol")
        muc = alice.plugin["xep_0045"]
        await create_room(alice, "desk", "Alice", {"moderatedroom": True})
        presence, *_ = await bob.plugin["xep_0045"].join_muc_wait(room_jid("desk"), "Bob", timeout=10)
        assert presence["muc"]["role"] == "visitor"
        bob.send_message(mto=room_jid("desk"), mbody="may I?", mtype="groupchat")
        refused = await bob_in.wait(lambda s: s.name == "message" and s["type"] == "error")
        assert refused["error"]["condition"] == "forbidden"  # a visitor in a moderated room

        bob.plugin["xep_0045"].request_voice(room_jid("desk"), "participant")
        request = await alice_in.wait(lambda s: s.name == "message" and s["form"]["title"] == "Voice request")
        assert request["form"]["values"]["muc#roomnick"] == "Bob"
        await muc.set_role(room_jid("desk"), "Bob", "participant")
        voiced = await bob_in.wait(lambda s: s.name == "presence" and s["muc"]["role"] == "participant")
        assert 110 in codes(voiced)
        bob.send_message(mto=room_jid("desk"), mbody="thanks", mtype="groupchat")
        await alice_in.wait(lambda s: s.name == "message" and s["body"] == "thanks")

        # a participant may not kick; a moderator may not kick an owner
        with pytest.raises(IqError) as denied:
            await bob.plugin["xep_0045"].set_role(room_jid("desk"), "Alice", "none")
        assert denied.value.condition == "not-allowed"

        await carol.plugin["xep_0045"].join_muc_wait(room_jid("desk"), "Carol", timeout=10)
        await muc.set_role(room_jid("desk"), "Carol", "none", reason="off topic")
        kicked = await carol_in.wait(lambda s: s.name == "presence" and s["type"] == "unavailable")
        assert {110, 307} <= codes(kicked)
        await muc.set_affiliation(room_jid("desk"), "outcast", jid=JID("bob@localhost"))
        banned = await bob_in.wait(
            lambda s: s["type"] == "unavailable" and str(s["from"]) == f"desk@{MUC}/Bob"
        )
        assert {110, 301} <= codes(banned)
        seen = await alice_in.wait(lambda s: s.name == "presence" and 301 in codes(s))
        assert str(seen["from"]) == f"desk@{MUC}/Bob"


async def test_owner_rules_and_bad_forms(server: Server, clients: Clients) -> None:
    """A non-owner changing the configuration, a malformed form, a title over the limit, removing the last
    owner."""
    async with running_muc(server):
        alice, _ = await user(clients, "alice")
        bob, _ = await user(clients, "bob")
        muc = alice.plugin["xep_0045"]
        await create_room(alice, "desk", "Alice")
        await bob.plugin["xep_0045"].join_muc_wait(room_jid("desk"), "Bob", timeout=10)
        with pytest.raises(IqError) as not_owner:
            await configure(bob, "desk", {"moderatedroom": True})
        assert not_owner.value.condition == "forbidden"
        with pytest.raises(IqError) as malformed:
            await configure(alice, "desk", {"moderatedroom": "perhaps"})
        assert malformed.value.condition == "bad-request"
        with pytest.raises(IqError) as too_long:
            await configure(alice, "desk", {"roomname": "t" * 300})
        assert too_long.value.condition == "not-acceptable"
        with pytest.raises(IqError) as last_owner:
            await muc.set_affiliation(room_jid("desk"), "member", jid=JID("alice@localhost"))
        assert last_owner.value.condition == "conflict"
        # a second owner first: then the first may step down
        await muc.set_affiliation(room_jid("desk"), "owner", jid=JID("bob@localhost"))
        await muc.set_affiliation(room_jid("desk"), "admin", jid=JID("alice@localhost"))
        owners = await bob.plugin["xep_0045"].get_affiliation_list(room_jid("desk"), "owner")
        assert owners == ["bob@localhost"]


async def test_invitations_and_destroy(server: Server, clients: Clients) -> None:
    async with running_muc(server):
        alice, _ = await user(clients, "alice")
        bob, bob_in = await user(clients, "bob")
        _carol, carol_in = await user(clients, "carol")
        await create_room(alice, "club", "Alice", {"membersonly": True})
        alice.plugin["xep_0045"].invite(room_jid("club"), JID("bob@localhost"), reason="join us")
        invite = await bob_in.wait(lambda s: s.name == "message" and s["muc"]["invite"]["from"])
        assert invite["muc"]["invite"]["reason"] == "join us"
        await bob.plugin["xep_0045"].join_muc_wait(room_jid("club"), "Bob", timeout=10)  # now a member
        # XEP-0249 direct invitation: client to client, then the invitee joins
        alice.plugin["xep_0249"].send_invitation(JID("carol@localhost"), room_jid("open"), reason="come")
        direct = await carol_in.wait(lambda s: s.name == "message" and s["groupchat_invite"]["jid"])
        assert str(direct["groupchat_invite"]["jid"]) == f"open@{MUC}"

        await alice.plugin["xep_0045"].destroy(room_jid("club"), reason="moving", altroom=JID(f"new@{MUC}"))
        gone = await bob_in.wait(lambda s: s.name == "presence" and s["type"] == "unavailable")
        destroy = gone.xml.find(".//{http://jabber.org/protocol/muc#user}destroy")
        assert destroy is not None
        assert destroy.get("jid") == f"new@{MUC}"
