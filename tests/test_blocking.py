"""Blocking Command (XEP-0191) as transcripts: alice blocks bob; bob can no longer reach her and cannot
tell why, alice cannot write to him by mistake, and every client of alice that asked hears of it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import slixmpp
from conftest import DOMAIN, Clients, wait_for
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET, StanzaBase

from nitro.modules.blocking import candidates
from nitro.server import Server
from nitro.storage.models import RosterItem
from nitro.xmpp.jid import JID

BLOCKING = "urn:xmpp:blocking"
BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
CLIENT = "jabber:client"


class Client:
    """A logged-in resource and what it received: messages, message errors, presence, block list pushes."""

    def __init__(self, client: slixmpp.ClientXMPP) -> None:
        self.client = client
        self.messages: list[Any] = []
        self.errors: list[Any] = []
        self.presence: list[Any] = []
        self.pushes: list[Any] = []
        client.add_event_handler("message", self.messages.append)
        client.add_event_handler("message_error", self.errors.append)
        client.add_event_handler("presence", self.presence.append)
        client.add_event_handler("blocked", self.pushes.append)
        client.add_event_handler("unblocked", self.pushes.append)

    @property
    def jid(self) -> str:
        return str(self.client.boundjid)

    @property
    def blocking(self) -> Any:
        return self.client.plugin["xep_0191"]

    async def settle(self) -> None:
        """Ping the server: whatever it wrote to this client before the answer has arrived."""
        await self.client.plugin["xep_0199"].send_ping(slixmpp.JID(DOMAIN), timeout=5)

    def say(self, to: str, body: str) -> None:
        self.client.make_message(mto=to, mbody=body, mtype="chat").send()

    def bodies(self) -> list[str]:
        return [message["body"] for message in self.messages]

    def presence_from(self, sender: str) -> list[str]:
        return [item["type"] for item in self.presence if str(item["from"]).startswith(sender)]

    async def fails(self, iq: Any) -> Any:
        """Send an IQ that must fail; its <error/>."""
        with pytest.raises(IqError) as failure:
            await iq.send(timeout=5)
        return failure.value.iq["error"]

    def iq_set(self, payload: str) -> Any:
        iq = self.client.make_iq_set()
        iq.xml.append(ET.fromstring(payload))
        return iq


async def online(clients: Clients, jid: str) -> Client:
    client = await clients.login(jid, plugins=["xep_0191"])
    holder = Client(client)
    full = JID.parse(holder.jid)
    await wait_for(lambda: (session := clients.server.sessions.get(full)) is not None and session.available)
    return holder


async def listening(clients: Clients, jid: str) -> Client:
    """As `online`, with what the client receives recorded from its first stanza on."""
    made: list[Client] = []
    await clients.login(jid, plugins=["xep_0191"], setup=lambda client: made.append(Client(client)))
    full = JID.parse(made[0].jid)
    await wait_for(lambda: (session := clients.server.sessions.get(full)) is not None and session.available)
    return made[0]


async def alice_and_bob(clients: Clients) -> tuple[Client, Client]:
    alice, bob = await clients.user("alice"), await clients.user("bob")
    return await online(clients, f"{alice}/desk"), await online(clients, f"{bob}/home")


def condition(error: StanzaBase) -> str:
    """The defined condition of an error reply (slixmpp puts the blocked app condition first)."""
    node = error.xml.find(f"{{{CLIENT}}}error")
    assert node is not None
    names = [child.tag.split("}")[1] for child in node if child.tag.startswith(f"{{{STANZAS}}}")]
    return next(name for name in names if name != "text")


async def test_the_server_advertises_blocking(clients: Clients) -> None:
    alice, _bob = await alice_and_bob(clients)
    info = await alice.client.plugin["xep_0030"].get_info(jid=slixmpp.JID(DOMAIN), timeout=5)
    assert BLOCKING in info["disco_info"]["features"]


async def test_alice_blocks_bob_and_the_list_says_so(server: Server, clients: Clients) -> None:
    alice, _bob = await alice_and_bob(clients)
    assert await alice.blocking.get_blocked_jids(timeout=5) == set()

    await alice.blocking.block([slixmpp.JID("Bob@LocalHost")], timeout=5)

    assert await alice.blocking.get_blocked_jids(timeout=5) == {slixmpp.JID("bob@localhost")}
    assert await server.storage.blocklist.list("alice") == ["bob@localhost"]  # stored before the result


def vcard_get(client: Client, to: str) -> Any:
    """A vCard request (XEP-0054), which the server answers on the owner's behalf, to anyone."""
    iq = client.client.make_iq_get(ito=to)
    iq.xml.append(ET.fromstring("<vCard xmlns='vcard-temp'/>"))
    return iq


async def test_bob_cannot_reach_alice_and_cannot_tell_he_is_blocked(clients: Clients) -> None:
    alice, bob = await alice_and_bob(clients)
    await alice.iq_set("<vCard xmlns='vcard-temp'><FN>Alice</FN></vCard>").send(timeout=5)
    assert (await vcard_get(bob, "alice@localhost").send(timeout=5))["type"] == "result"  # before the block
    await alice.blocking.block(slixmpp.JID("bob@localhost"), timeout=5)

    bob.say("alice@localhost", "Hello?")
    await wait_for(lambda: len(bob.errors) == 1)
    assert condition(bob.errors[0]) == "service-unavailable"  # §3.3: as if alice were not there
    assert bob.errors[0].xml.find(f".//{{{BLOCKING_ERRORS}}}blocked") is None

    ping = bob.client.make_iq_get(ito=alice.jid)
    ping.enable("ping")
    assert (await bob.fails(ping))["condition"] == "service-unavailable"
    assert (await bob.fails(vcard_get(bob, "alice@localhost")))["condition"] == "service-unavailable"

    bob.client.send_presence(pto=alice.jid, pshow="chat")
    await bob.settle()  # no error for presence, ever
    await alice.settle()
    assert alice.messages == []
    assert alice.presence_from("bob@") == []
    assert len(bob.errors) == 1


async def test_alice_cannot_write_to_bob_whom_she_blocked(clients: Clients) -> None:
    alice, bob = await alice_and_bob(clients)
    await alice.blocking.block(slixmpp.JID("bob@localhost"), timeout=5)

    alice.say(bob.jid, "Oops")
    await wait_for(lambda: len(alice.errors) == 1)
    error = alice.errors[0]
    assert condition(error) == "not-acceptable"
    assert error["error"]["type"] == "cancel"
    assert error.xml.find(f"{{{CLIENT}}}error/{{{BLOCKING_ERRORS}}}blocked") is not None

    ping = alice.client.make_iq_get(ito=bob.jid)
    ping.enable("ping")
    assert (await alice.fails(ping))["condition"] == "not-acceptable"
    await bob.settle()
    assert bob.messages == []


async def test_the_push_reaches_every_resource_that_asked_for_the_list(clients: Clients) -> None:
    alice_jid = await clients.user("alice")
    await clients.user("bob")
    desk = await online(clients, f"{alice_jid}/desk")
    phone = await online(clients, f"{alice_jid}/phone")
    tablet = await online(clients, f"{alice_jid}/tablet")
    await desk.blocking.get_blocked(timeout=5)
    await phone.blocking.get_blocked(timeout=5)

    await desk.blocking.block(slixmpp.JID("bob@localhost"), timeout=5)

    await wait_for(lambda: len(desk.pushes) == 1 and len(phone.pushes) == 1)
    push = phone.pushes[0]
    assert [item["jid"] for item in push["block"]] == [slixmpp.JID("bob@localhost")]
    await tablet.settle()
    assert tablet.pushes == []  # it never asked for the list (§3.2)

    await desk.blocking.unblock(slixmpp.JID("bob@localhost"), timeout=5)

    await wait_for(lambda: len(phone.pushes) == 2)
    assert [item["jid"] for item in phone.pushes[1]["unblock"]] == [slixmpp.JID("bob@localhost")]


async def test_unblocking_bob_lets_him_through_again(clients: Clients) -> None:
    alice, bob = await alice_and_bob(clients)
    await alice.blocking.block(slixmpp.JID("bob@localhost"), timeout=5)
    await alice.blocking.unblock(slixmpp.JID("bob@localhost"), timeout=5)

    bob.say("alice@localhost", "Friends again?")
    alice.say(bob.jid, "Friends again.")

    await wait_for(lambda: alice.bodies() == ["Friends again?"] and bob.bodies() == ["Friends again."])
    assert bob.errors == alice.errors == []


async def test_an_empty_unblock_unblocks_everyone(server: Server, clients: Clients) -> None:
    alice, bob = await alice_and_bob(clients)
    carol = await online(clients, f"{await clients.user('carol')}/home")
    await alice.blocking.get_blocked(timeout=5)
    await alice.blocking.block([slixmpp.JID("bob@localhost"), slixmpp.JID("carol@localhost")], timeout=5)

    await alice.iq_set(f"<unblock xmlns='{BLOCKING}'/>").send(timeout=5)

    await wait_for(lambda: len(alice.pushes) == 2)
    assert list(alice.pushes[1]["unblock"]) == []  # §3.5: the push of an unblock-all has no items
    assert await server.storage.blocklist.list("alice") == []
    bob.say("alice@localhost", "from bob")
    carol.say("alice@localhost", "from carol")
    await wait_for(lambda: sorted(alice.bodies()) == ["from bob", "from carol"])


async def test_a_blocked_sender_is_refused_while_alice_is_offline_too(
    server: Server, clients: Clients
) -> None:
    alice, bob = await alice_and_bob(clients)
    await alice.blocking.block(slixmpp.JID("bob@localhost"), timeout=5)
    await alice.client.disconnect()
    await wait_for(lambda: not server.sessions.sessions_of(JID.parse("alice@localhost")))

    bob.say("alice@localhost", "Are you ignoring me?")

    await wait_for(lambda: len(bob.errors) == 1)
    assert condition(bob.errors[0]) == "service-unavailable"
    assert await server.storage.offline.count("alice") == 0  # refused, not stored for later


async def test_blocking_a_domain_blocks_its_users_but_never_alices_own_resources(clients: Clients) -> None:
    alice, bob = await alice_and_bob(clients)
    phone = await online(clients, "alice@localhost/phone")
    await alice.blocking.block(slixmpp.JID(DOMAIN), timeout=5)

    bob.say(alice.jid, "From a blocked domain")
    phone.say(alice.jid, "From my own phone")

    await wait_for(lambda: len(bob.errors) == 1 and alice.bodies() == ["From my own phone"])
    assert condition(bob.errors[0]) == "service-unavailable"


async def test_blocking_and_unblocking_a_contact_updates_presence_both_ways(
    server: Server, clients: Clients
) -> None:
    alice, bob = await alice_and_bob(clients)
    alice.client.send_presence_subscription(pto="bob@localhost")  # bob's client approves and asks back

    async def mutual() -> bool:
        ours = await server.storage.rosters.get_item("alice", "bob@localhost")
        theirs = await server.storage.rosters.get_item("bob", "alice@localhost")
        return ours is not None and theirs is not None and ours.subscription == theirs.subscription == "both"

    for _ in range(250):
        if await mutual() and alice.presence_from("bob@") and bob.presence_from("alice@"):
            break
        await alice.settle()
    assert await mutual()
    alice.presence.clear()
    bob.presence.clear()

    await alice.blocking.block(slixmpp.JID("bob@localhost"), timeout=5)

    await wait_for(lambda: bob.presence_from("alice@") == ["unavailable"])  # §3.3
    await wait_for(lambda: alice.presence_from("bob@") == ["unavailable"])  # bob disappears for her too
    bob.client.send_presence(pshow="away")
    await bob.settle()
    await alice.settle()
    assert alice.presence_from("bob@") == ["unavailable"]  # his updates no longer reach her

    await alice.blocking.unblock(slixmpp.JID("bob@localhost"), timeout=5)

    await wait_for(lambda: bob.presence_from("alice@") == ["unavailable", "available"])  # §3.4
    await wait_for(lambda: alice.presence_from("bob@") == ["unavailable", "away"])  # probed for her


async def test_alices_presence_no_longer_reaches_bob_whom_she_blocked(
    server: Server, clients: Clients
) -> None:
    """§3.3 for the copies the server sends on her behalf: her broadcasts and her probe answers skip bob, and
    his skip her, while the rest of her contacts still get them."""
    for name in ("alice", "bob", "carol"):
        await clients.user(name)
    for one, other in (("alice", "bob"), ("alice", "carol"), ("bob", "alice")):
        await server.storage.rosters.put(one, RosterItem(f"{other}@localhost", subscription="both"))
    await server.storage.rosters.put("carol", RosterItem("alice@localhost", subscription="both"))
    alice = await online(clients, "alice@localhost/desk")
    await alice.blocking.block(slixmpp.JID("bob@localhost"), timeout=5)
    bob = await listening(clients, "bob@localhost/home")
    carol = await online(clients, "carol@localhost/home")

    alice.client.send_presence(pshow="xa")
    bob.client.send_presence(pshow="away")
    await wait_for(lambda: "xa" in carol.presence_from("alice@"))
    await bob.settle()
    await alice.settle()

    assert bob.presence_from("alice@") == []
    assert alice.presence_from("bob@") == []
    assert alice.presence_from("carol@")  # carol's broadcast


async def test_presence_waits_for_a_block_list_that_could_not_be_read(
    server: Server, clients: Clients, tmp_path: Path
) -> None:
    """§3.3 when storage fails: bob's list could not be loaded at his login, so whether he blocks alice is
    unknown; neither his broadcast nor alice's probe answer passes until his list can be read."""
    await clients.user("alice")
    await clients.user("bob")
    await server.storage.rosters.put("alice", RosterItem("bob@localhost", subscription="both"))
    await server.storage.rosters.put("bob", RosterItem("alice@localhost", subscription="both"))
    alice = await online(clients, "alice@localhost/desk")  # her list is loaded and cached
    other = sqlite3.connect(tmp_path / "nitro.db", isolation_level=None, timeout=5)
    try:
        other.execute("ALTER TABLE blocked_jids RENAME TO blocked_elsewhere")
        bob = await listening(clients, "bob@localhost/home")  # his list fails to load at bind
        await bob.settle()  # his broadcast and the probe answers are written before the pong
        await alice.settle()
        assert bob.presence_from("alice@") == []
        assert alice.presence_from("bob@") == []
        other.execute("ALTER TABLE blocked_elsewhere RENAME TO blocked_jids")
    finally:
        other.close()

    bob.client.send_presence(pshow="away")  # his list is read now, and it blocks nobody
    await wait_for(lambda: alice.presence_from("bob@") == ["away"])
    alice.client.send_presence(pshow="dnd")
    await wait_for(lambda: bob.presence_from("alice@") == ["dnd"])


# -- bad input -------------------------------------------------------------------------------------------


BAD_REQUESTS = [
    (f"<block xmlns='{BLOCKING}'/>", "bad-request"),  # §3.3: at least one item
    (f"<block xmlns='{BLOCKING}'><item/></block>", "bad-request"),  # the schema requires 'jid'
    (f"<block xmlns='{BLOCKING}'><item jid='bob@@localhost'/></block>", "jid-malformed"),
    (f"<block xmlns='{BLOCKING}'><item jid='a@localhost'/><item jid=''/></block>", "jid-malformed"),
    (f"<unblock xmlns='{BLOCKING}'><item jid='bob@localhost/'/></unblock>", "jid-malformed"),
    (f"<block xmlns='{BLOCKING}'><item jid='alice@localhost'/></block>", "not-acceptable"),  # own JID
    (f"<block xmlns='{BLOCKING}'><item jid='ALICE@localhost/phone'/></block>", "not-acceptable"),
]


async def test_bad_block_requests_are_refused_and_change_nothing(server: Server, clients: Clients) -> None:
    alice, _bob = await alice_and_bob(clients)

    for payload, expected in BAD_REQUESTS:
        error = await alice.fails(alice.iq_set(payload))
        assert (payload, error["condition"]) == (payload, expected)

    assert await server.storage.blocklist.list("alice") == []
    assert await alice.blocking.get_blocked_jids(timeout=5) == set()


async def test_another_users_block_list_is_not_reachable(clients: Clients) -> None:
    alice, _bob = await alice_and_bob(clients)
    iq = alice.client.make_iq_get(ito="bob@localhost")
    iq.xml.append(ET.fromstring(f"<blocklist xmlns='{BLOCKING}'/>"))

    error = await alice.fails(iq)

    assert error["condition"] == "service-unavailable"


# -- JID matching (§6), without a network ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "jid", "matches"),
    [
        ("bob@example.org/phone", "bob@example.org/phone", True),
        ("bob@example.org/phone", "bob@example.org/desk", False),
        ("bob@example.org/phone", "bob@example.org", False),
        ("bob@example.org", "bob@example.org/desk", True),
        ("bob@example.org", "bob@example.org", True),
        ("bob@example.org", "eve@example.org", False),
        ("example.org/bot", "example.org/bot", True),
        ("example.org/bot", "bob@example.org/bot", False),
        ("example.org", "bob@example.org/phone", True),
        ("example.org", "example.org", True),
        ("example.org", "chat.example.org", False),
    ],
)
def test_block_list_entries_match_as_xep_0191_says(entry: str, jid: str, matches: bool) -> None:
    assert (entry in set(candidates(JID.parse(jid)))) is matches
