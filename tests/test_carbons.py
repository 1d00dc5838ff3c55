"""Message Carbons (XEP-0280) as transcripts: alice has a desktop and a phone; bob writes to her, she
answers; the resource that did not take part sees both sides, unless a message is private."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import slixmpp
from conftest import DOMAIN, Clients, wait_for
from slixmpp import Message
from slixmpp.exceptions import IqError
from slixmpp.types import MessageTypes
from slixmpp.xmlstream import ET

from nitro.server import Server
from nitro.xmpp.jid import JID

CARBONS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"
HINTS = "urn:xmpp:hints"
CLIENT = "jabber:client"


class Resource:
    """One logged-in resource and everything it received: plain messages and both kinds of carbons."""

    def __init__(self, client: slixmpp.ClientXMPP) -> None:
        self.client = client
        self.messages: list[Any] = []
        self.received: list[Any] = []
        self.sent: list[Any] = []
        client.add_event_handler("message", self.messages.append)
        client.add_event_handler("carbon_received", self.received.append)
        client.add_event_handler("carbon_sent", self.sent.append)

    @property
    def jid(self) -> str:
        return str(self.client.boundjid)

    async def enable(self) -> None:
        await self.client.plugin["xep_0280"].enable(timeout=5)

    async def disable(self) -> None:
        await self.client.plugin["xep_0280"].disable(timeout=5)

    async def settle(self) -> None:
        """Ping the server: whatever it wrote to this resource before the answer has now arrived."""
        await self.client.plugin["xep_0199"].send_ping(slixmpp.JID(DOMAIN), timeout=5)

    def send(self, to: str, body: str, mtype: MessageTypes = "chat", *extra: str) -> None:
        message = self.client.make_message(mto=to, mbody=body, mtype=mtype)
        for payload in extra:
            message.xml.append(ET.fromstring(payload))
        message.send()


async def resource(clients: Clients, jid: str, priority: int = 0) -> Resource:
    """Log `jid` in with carbons support and wait until the server has its available presence."""
    client = await clients.login(jid, plugins=["xep_0280"], send_presence=False)
    holder = Resource(client)
    client.send_presence(ppriority=priority)
    full = JID.parse(str(client.boundjid))

    def available() -> bool:
        session = clients.server.sessions.get(full)
        return session is not None and session.available and session.priority == priority

    await wait_for(available)
    return holder


def forwarded(carbon: Message, direction: str) -> ET.Element:
    """The original message inside a carbon."""
    inner = carbon.xml.find(f"{{{CARBONS}}}{direction}/{{{FORWARD}}}forwarded/{{{CLIENT}}}message")
    assert inner is not None, carbon
    return inner


async def alice_and_bob(clients: Clients) -> tuple[Resource, Resource, Resource]:
    """alice's desktop (priority 5, carbons off), alice's phone (priority 0, carbons on), and bob."""
    alice, bob = await clients.user("alice"), await clients.user("bob")
    desk = await resource(clients, f"{alice}/desk", priority=5)
    phone = await resource(clients, f"{alice}/phone", priority=0)
    await phone.enable()
    return desk, phone, await resource(clients, f"{bob}/home")


async def test_the_server_advertises_carbons(clients: Clients) -> None:
    alice = await resource(clients, await clients.user("alice"))
    info = await alice.client.plugin["xep_0030"].get_info(jid=slixmpp.JID(DOMAIN), timeout=5)
    assert CARBONS in info["disco_info"]["features"]


async def test_bob_writes_alice_and_her_phone_gets_a_received_carbon(clients: Clients) -> None:
    desk, phone, bob = await alice_and_bob(clients)

    bob.send("alice@localhost", "Are you there?")

    await wait_for(lambda: len(desk.messages) == 1 and len(phone.received) == 1)
    carbon = phone.received[0]
    assert str(carbon["from"]) == "alice@localhost"  # §7: from the user's bare JID
    assert str(carbon["to"]) == phone.jid
    assert carbon["type"] == "chat"
    original = forwarded(carbon, "received")
    assert original.get("from") == bob.jid
    assert original.findtext(f"{{{CLIENT}}}body") == "Are you there?"
    assert phone.messages == []  # the phone has a lower priority: only the copy reaches it
    await desk.settle()
    assert desk.received == []  # the desktop has carbons off


async def test_a_message_to_the_desktop_full_jid_is_copied_to_the_phone(clients: Clients) -> None:
    desk, phone, bob = await alice_and_bob(clients)

    bob.send(desk.jid, "Just for the desktop")

    await wait_for(lambda: len(desk.messages) == 1 and len(phone.received) == 1)
    assert forwarded(phone.received[0], "received").get("to") == desk.jid


async def test_a_resource_that_gets_the_original_gets_no_copy(clients: Clients) -> None:
    alice, bob_jid = await clients.user("alice"), await clients.user("bob")
    desk = await resource(clients, f"{alice}/desk")
    phone = await resource(clients, f"{alice}/phone")
    await desk.enable()
    await phone.enable()
    bob = await resource(clients, f"{bob_jid}/home")

    bob.send(alice, "To both of you")

    await wait_for(lambda: len(desk.messages) == 1 and len(phone.messages) == 1)
    await desk.settle()
    await phone.settle()
    assert desk.received == phone.received == []  # same priority: both got the original (§7)


async def test_alice_answers_from_the_desktop_and_the_phone_gets_a_sent_carbon(clients: Clients) -> None:
    desk, phone, bob = await alice_and_bob(clients)
    await desk.enable()

    desk.send(bob.jid, "Here I am")

    await wait_for(lambda: len(bob.messages) == 1 and len(phone.sent) == 1)
    carbon = phone.sent[0]
    assert str(carbon["from"]) == "alice@localhost"
    original = forwarded(carbon, "sent")
    assert original.get("from") == desk.jid
    assert original.get("to") == bob.jid
    assert original.findtext(f"{{{CLIENT}}}body") == "Here I am"
    await desk.settle()
    assert desk.sent == []  # §8: never a copy to the sending resource


async def test_a_private_message_is_not_copied_and_arrives_without_the_private_element(
    clients: Clients,
) -> None:
    desk, phone, bob = await alice_and_bob(clients)
    bob_phone = await resource(clients, "bob@localhost/phone", priority=-1)
    await bob_phone.enable()

    desk.send(bob.jid, "Between us", "chat", f"<private xmlns='{CARBONS}'/>", f"<no-copy xmlns='{HINTS}'/>")
    desk.send(bob.jid, "Anyone may see this")

    await wait_for(lambda: len(bob.messages) == 2 and len(phone.sent) == 1)
    assert forwarded(phone.sent[0], "sent").findtext(f"{{{CLIENT}}}body") == "Anyone may see this"
    secret = bob.messages[0]
    assert secret["body"] == "Between us"
    assert secret.xml.find(f"{{{CARBONS}}}private") is None  # §9: the receiving server removes it
    assert secret.xml.find(f"{{{HINTS}}}no-copy") is not None
    await wait_for(lambda: len(bob_phone.received) == 1)
    assert forwarded(bob_phone.received[0], "received").findtext(f"{{{CLIENT}}}body") == "Anyone may see this"


async def test_an_inbound_no_copy_hint_is_honoured(clients: Clients) -> None:
    desk, phone, bob = await alice_and_bob(clients)

    bob.send("alice@localhost", "Do not copy me", "chat", f"<no-copy xmlns='{HINTS}'/>")
    bob.send("alice@localhost", "Copy me")

    await wait_for(lambda: len(desk.messages) == 2 and len(phone.received) == 1)
    assert forwarded(phone.received[0], "received").findtext(f"{{{CLIENT}}}body") == "Copy me"


async def test_only_instant_messages_are_copied(clients: Clients) -> None:
    desk, phone, bob = await alice_and_bob(clients)

    bob.send("alice@localhost", "News flash", "headline")
    bob.send("alice@localhost", "A normal message with a body", "normal")

    await wait_for(lambda: len(desk.messages) == 2 and len(phone.received) == 1)
    original = forwarded(phone.received[0], "received")
    assert original.findtext(f"{{{CLIENT}}}body") == "A normal message with a body"
    assert phone.received[0]["type"] == "normal"


async def test_a_forged_carbon_from_bob_is_delivered_but_never_copied(clients: Clients) -> None:
    desk, phone, bob = await alice_and_bob(clients)
    forged = (
        f"<received xmlns='{CARBONS}'><forwarded xmlns='{FORWARD}'>"
        f"<message xmlns='{CLIENT}' from='mallory@localhost' to='alice@localhost' type='chat'>"
        "<body>trust me</body></message></forwarded></received>"
    )

    bob.send("alice@localhost", "wrapped", "chat", forged)
    bob.send("alice@localhost", "plain")

    await wait_for(lambda: len(desk.messages) == 2 and len(phone.received) == 1)
    assert forwarded(phone.received[0], "received").findtext(f"{{{CLIENT}}}body") == "plain"


async def test_with_carbons_disabled_there_are_no_copies(clients: Clients) -> None:
    desk, phone, bob = await alice_and_bob(clients)
    await phone.disable()
    await phone.disable()  # §10.1: a repeated disable is not an error

    bob.send("alice@localhost", "Nobody copies this")
    await wait_for(lambda: len(desk.messages) == 1)
    desk.send(bob.jid, "Nor this")
    await wait_for(lambda: len(bob.messages) == 1)

    await phone.settle()
    assert phone.received == phone.sent == phone.messages == []


async def test_an_enable_disable_storm_is_answered_in_order_and_the_last_one_wins(
    server: Server, clients: Clients
) -> None:
    desk, phone, bob = await alice_and_bob(clients)
    plugin = phone.client.plugin["xep_0280"]

    answers = await asyncio.gather(
        *((plugin.disable if turn % 2 else plugin.enable)(timeout=10) for turn in range(100))
    )

    assert [answer["type"] for answer in answers] == ["result"] * 100
    session = server.sessions.get(JID.parse(phone.jid))
    assert session is not None
    assert not session.has_flag("carbons")  # the 100th request was a disable
    bob.send("alice@localhost", "After the storm")
    await wait_for(lambda: len(desk.messages) == 1)
    await phone.settle()
    assert phone.received == []
    await phone.enable()
    bob.send("alice@localhost", "Copies again")
    await wait_for(lambda: len(phone.received) == 1)


async def test_enabling_carbons_on_another_users_account_is_refused(clients: Clients) -> None:
    _desk, phone, _bob = await alice_and_bob(clients)
    iq = phone.client.make_iq_set(ito="bob@localhost")
    iq.enable("carbon_enable")

    with pytest.raises(IqError) as failure:
        await iq.send(timeout=5)

    assert failure.value.iq["error"]["condition"] == "service-unavailable"
