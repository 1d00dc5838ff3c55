"""A session keeps its last presence as bytes (idle memory): probe answers made from them carry the presence
the client sent, whole, addressed to each prober; what modules read of it is a new element each time."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import slixmpp
from conftest import Clients, wait_for
from test_presence import befriend, login_with_inbox, session_of

from nitro.modules.presence_copies import ELEMENTS_REMEMBERED, Copies
from nitro.server import Server
from nitro.xmpp.xmlwrite import self_contained, serialize

CAPS = "http://jabber.org/protocol/caps"
STATUS = "out & about <there> ü \"'"


def rich_presence(client: slixmpp.ClientXMPP, status: str, priority: int) -> None:
    presence = client.make_presence(pstatus=status, ppriority=priority)
    caps = ET.Element(f"{{{CAPS}}}c", {"hash": "sha-1", "node": "https://example.org/n&q", "ver": "v1="})
    presence.xml.append(caps)
    presence.send()


async def test_probe_answers_carry_the_presence_as_sent_to_each_prober(
    server: Server, clients: Clients
) -> None:
    """alice goes online with status, priority and caps; bob, then carol, log in: each gets it whole, to his
    own full JID; after alice changes it, dave gets the new one."""
    names = ("alice", "bob", "carol", "dave")
    alice_jid, bob_jid, carol_jid, dave_jid = [await clients.user(name) for name in names]
    for contact in (bob_jid, carol_jid, dave_jid):
        await befriend(server, alice_jid, contact)
    alice = await clients.login(alice_jid, send_presence=False)
    rich_presence(alice, STATUS, 5)
    await wait_for(lambda: (session := session_of(server, alice)) is not None and session.available)

    for jid in (bob_jid, carol_jid):
        prober, inbox = await login_with_inbox(clients, jid)
        answer = await inbox.receives("available", str(alice.boundjid))
        assert answer["to"] == prober.boundjid
        assert answer["status"] == STATUS
        assert answer["priority"] == 5
        caps = answer.xml.find(f"{{{CAPS}}}c")
        assert caps is not None
        assert (caps.get("node"), caps.get("ver")) == ("https://example.org/n&q", "v1=")

    rich_presence(alice, "changed", -3)
    await wait_for(lambda: b"changed" in (session_of(server, alice).presence_xml or b""))
    dave, dave_inbox = await login_with_inbox(clients, dave_jid)
    answer = await dave_inbox.receives("available", str(alice.boundjid))
    assert (answer["status"], answer["priority"], answer["to"]) == ("changed", -3, dave.boundjid)


async def test_the_session_keeps_bytes_and_hands_out_new_elements(server: Server, clients: Clients) -> None:
    alice_jid = await clients.user("alice")
    alice = await clients.login(alice_jid, send_presence=False)
    rich_presence(alice, STATUS, 1)
    await wait_for(lambda: (session := session_of(server, alice)) is not None and session.available)
    session = session_of(server, alice)

    kept = session.presence_xml
    assert isinstance(kept, bytes)
    assert kept.startswith(b'<presence xmlns="jabber:client" ')  # parses on its own
    first, second = session.presence, session.presence
    assert first is not second
    first.set("to", "mallory@localhost")  # a reader changing its element changes nothing kept
    assert session.presence_xml == kept == self_contained(second)
    assert session.resource.presence_xml is kept

    alice.send_presence(ptype="unavailable")
    await wait_for(lambda: not session.available)
    assert session.presence is None
    assert session.presence_xml is None


def test_the_elements_remembered_for_probe_answers_are_bounded() -> None:
    copies = Copies(None)  # type: ignore[arg-type]  # what is remembered needs no server
    kept = [b'<presence xmlns="jabber:client" from="u%d@localhost/r"/>' % index for index in range(300)]
    first, template = copies.element_of(kept[0])
    assert copies.element_of(kept[0])[0] is first  # parsed once
    assert serialize(first) == b'<presence from="u0@localhost/r"/>'
    assert template.to("bob@localhost") == b'<presence from="u0@localhost/r" to="bob@localhost"/>'
    for data in kept[1 : ELEMENTS_REMEMBERED + 1]:
        copies.element_of(data)
    again = copies.element_of(kept[0])[0]  # the oldest was let go: parsed anew
    assert again is not first
    assert serialize(again) == serialize(first)
    assert copies.element_of(kept[ELEMENTS_REMEMBERED])[0] is copies.element_of(kept[ELEMENTS_REMEMBERED])[0]
