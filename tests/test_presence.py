"""Presence and subscriptions (RFC 6121 §3, §4) as transcripts between real slixmpp clients."""

from __future__ import annotations

import asyncio
import dataclasses
import xml.etree.ElementTree as ET
from typing import Any

import slixmpp
from conftest import Clients, wait_for

from nitro.core.events import (
    PASS,
    PRESENCE_RECIPIENTS,
    STANZA_FILTER,
    PresenceRecipients,
    RoutedStanza,
    Verdict,
)
from nitro.core.module import SessionEvent
from nitro.server import Server
from nitro.storage.models import RosterItem
from nitro.xmpp.jid import JID


class Inbox:
    """Every presence stanza one client receives, so a test can say "bob receives …"."""

    def __init__(self, client: slixmpp.ClientXMPP) -> None:
        self.stanzas: list[Any] = []
        client.add_event_handler("presence", self.stanzas.append)

    def matching(self, type_: str, from_: str) -> list[Any]:
        return [p for p in self.stanzas if p["type"] == type_ and str(p["from"]) == from_]

    async def receives(self, type_: str, from_: str) -> Any:
        await wait_for(lambda: bool(self.matching(type_, from_)))
        return self.matching(type_, from_)[0]

    async def never_receives(self, type_: str, from_: str) -> None:
        await asyncio.sleep(0.3)
        assert self.matching(type_, from_) == []


def manual(client: slixmpp.ClientXMPP) -> None:
    """No automatic answers to subscription requests: the test decides."""
    client.roster.auto_authorize = None  # type: ignore[assignment]  # documented "don't answer", typed bool
    client.roster.auto_subscribe = False


async def login_with_inbox(
    clients: Clients, jid: str, *, answer: bool = True, send_presence: bool = True
) -> tuple[slixmpp.ClientXMPP, Inbox]:
    """Log in with an inbox attached before the stream starts (nothing is missed)."""
    inbox: list[Inbox] = []

    def setup(client: slixmpp.ClientXMPP) -> None:
        inbox.append(Inbox(client))
        if not answer:
            manual(client)

    client = await clients.login(jid, setup=setup, send_presence=send_presence)
    return client, inbox[0]


async def befriend(server: Server, a: str, b: str) -> None:
    """Mutual subscription, as the storage would hold it after a completed exchange."""
    await server.storage.rosters.put(a.split("@")[0], RosterItem(b, subscription="both"))
    await server.storage.rosters.put(b.split("@")[0], RosterItem(a, subscription="both"))


async def subscription(server: Server, user: str, contact: str) -> RosterItem | None:
    return await server.storage.rosters.get_item(user, contact)


async def eventually(server: Server, user: str, contact: str, expected: RosterItem | None) -> None:
    """Wait until the stored roster item is `expected`."""
    for _ in range(100):
        if await subscription(server, user, contact) == expected:
            return
        await asyncio.sleep(0.02)
    assert await subscription(server, user, contact) == expected


async def pending_request(server: Server, user: str, contact: str) -> RosterItem:
    """Wait until `user` keeps `contact`'s subscription request, and return that item."""
    for _ in range(100):
        item = await subscription(server, user, contact)
        if item is not None and item.pending_in:
            return item
        await asyncio.sleep(0.02)
    raise AssertionError(f"{user} keeps no request from {contact}")


def session_of(server: Server, client: slixmpp.ClientXMPP) -> Any:
    return server.sessions.get(JID.parse(str(client.boundjid)))


async def test_alice_and_bob_subscribe_to_each_other_and_see_each_other_come_and_go(
    server: Server, clients: Clients
) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    bob, bob_inbox = await login_with_inbox(clients, bob_jid)  # slixmpp approves and asks back
    alice, alice_inbox = await login_with_inbox(clients, alice_jid)
    await bob.get_roster()
    await alice.get_roster()

    alice.send_presence(pto=bob_jid, ptype="subscribe")

    await bob_inbox.receives("subscribe", alice_jid)
    await alice_inbox.receives("subscribed", bob_jid)
    await alice_inbox.receives("subscribe", bob_jid)
    await bob_inbox.receives("subscribed", alice_jid)
    await wait_for(lambda: alice.client_roster[bob_jid]["subscription"] == "both")
    await wait_for(lambda: bob.client_roster[alice_jid]["subscription"] == "both")
    assert (await subscription(server, "alice", bob_jid)) == RosterItem(bob_jid, subscription="both")
    assert (await subscription(server, "bob", alice_jid)) == RosterItem(alice_jid, subscription="both")
    # §3.1.5: each approval is followed by the approver's current presence.
    await alice_inbox.receives("available", str(bob.boundjid))
    await bob_inbox.receives("available", str(alice.boundjid))

    alice.disconnect()
    await bob_inbox.receives("unavailable", str(alice.boundjid))

    again, again_inbox = await login_with_inbox(clients, f"{alice_jid}/again")
    await bob_inbox.receives("available", str(again.boundjid))
    await again_inbox.receives("available", str(bob.boundjid))  # the probe, answered from bob's session

    again.abort()  # the TCP connection just drops: the server says it for her (§4.5.2)
    await bob_inbox.receives("unavailable", str(again.boundjid))


async def test_a_users_resources_see_each_other(clients: Clients) -> None:
    alice_jid = await clients.user("alice")
    phone, phone_inbox = await login_with_inbox(clients, f"{alice_jid}/phone")
    await phone_inbox.receives("available", str(phone.boundjid))  # §4.2.2: the sender gets it too
    laptop, laptop_inbox = await login_with_inbox(clients, f"{alice_jid}/laptop")

    await phone_inbox.receives("available", str(laptop.boundjid))
    await laptop_inbox.receives("available", str(phone.boundjid))

    phone.send_presence(pstatus="in a meeting", pshow="dnd")
    changed = await laptop_inbox.receives("dnd", str(phone.boundjid))
    assert changed["status"] == "in a meeting"


async def test_a_subscription_request_to_an_offline_user_is_delivered_when_they_log_in(
    server: Server, clients: Clients
) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, alice_inbox = await login_with_inbox(clients, alice_jid)
    await alice.get_roster()

    alice.send_presence(pto=bob_jid, ptype="subscribe")
    await wait_for(lambda: alice.client_roster[bob_jid]["pending_out"])
    kept = await pending_request(server, "bob", alice_jid)
    assert kept.request is not None  # kept whole (§3.1.3) for bob, but not on his roster
    assert dataclasses.replace(kept, request=None) == RosterItem(alice_jid, pending_in=True, in_roster=False)

    bob, bob_inbox = await login_with_inbox(clients, bob_jid, answer=False)
    request = await bob_inbox.receives("subscribe", alice_jid)
    assert request["to"].bare == bob_jid

    bob.send_presence(pto=alice_jid, ptype="subscribed")
    await alice_inbox.receives("subscribed", bob_jid)
    await alice_inbox.receives("available", str(bob.boundjid))
    await wait_for(lambda: alice.client_roster[bob_jid]["subscription"] == "to")
    assert (await subscription(server, "bob", alice_jid)) == RosterItem(alice_jid, subscription="from")


PARS = "urn:xmpp:pars:0"  # XEP-0401 pre-authenticated roster subscription
NICK = "http://jabber.org/protocol/nick"  # XEP-0172


async def test_a_stored_request_is_delivered_whole_with_its_extended_content(
    server: Server, clients: Clients
) -> None:
    """Issue 11 item 10, RFC 6121 §3.1.3: status, nick and a pre-auth token reach the user at login."""
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice = await clients.login(alice_jid)
    request = alice.make_presence(pto=bob_jid, ptype="subscribe", pstatus="it's Alice, from the party")
    request.append(ET.fromstring(f"<nick xmlns='{NICK}'>Ally</nick>"))  # noqa: S314  # our own literal
    request.append(ET.fromstring(f"<preauth xmlns='{PARS}' token='f0rb0b'/>"))  # noqa: S314
    request.send()
    await pending_request(server, "bob", alice_jid)  # bob is offline: the request is kept

    bob, bob_inbox = await login_with_inbox(clients, bob_jid, answer=False)
    delivered = await bob_inbox.receives("subscribe", alice_jid)

    assert delivered["status"] == "it's Alice, from the party"
    assert delivered.xml.findtext(f"{{{NICK}}}nick") == "Ally"
    preauth = delivered.xml.find(f"{{{PARS}}}preauth")
    assert preauth is not None
    assert preauth.get("token") == "f0rb0b"
    assert delivered["to"].bare == bob_jid

    bob.send_presence(pto=alice_jid, ptype="subscribed")  # once answered, nothing of it is kept
    await eventually(server, "bob", alice_jid, RosterItem(alice_jid, subscription="from"))


async def test_a_request_too_large_to_keep_is_a_policy_violation(server: Server, clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, alice_inbox = await login_with_inbox(clients, alice_jid)
    alice.send_presence(pto=bob_jid, ptype="subscribe", pstatus="x" * 20000)

    error = await alice_inbox.receives("error", bob_jid)
    # slixmpp's Error lacks RFC 6120's policy-violation among its conditions: read the element itself
    assert (
        error.xml.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}policy-violation")
        is not None
    )
    assert await subscription(server, "bob", alice_jid) is None  # nothing kept for bob


async def test_a_request_is_delivered_once_even_if_sent_twice(clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice = await clients.login(alice_jid)
    _bob, bob_inbox = await login_with_inbox(clients, bob_jid, answer=False)

    alice.send_presence(pto=bob_jid, ptype="subscribe")
    await bob_inbox.receives("subscribe", alice_jid)
    alice.send_presence(pto=bob_jid, ptype="subscribe")  # A.3.1: "None + Pending In" is not delivered again
    await asyncio.sleep(0.3)
    assert len(bob_inbox.matching("subscribe", alice_jid)) == 1


async def test_pre_approved_subscription_is_answered_by_the_server(server: Server, clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    bob, bob_inbox = await login_with_inbox(clients, bob_jid, answer=False)
    await bob.get_roster()
    bob_pushes: list[Any] = []
    bob.add_event_handler("roster_update", bob_pushes.append)

    bob.send_presence(pto=alice_jid, ptype="subscribed")  # §3.4: approve before alice asks
    await wait_for(lambda: bool(bob_pushes))
    item = bob_pushes[0].xml.find("{jabber:iq:roster}query/{jabber:iq:roster}item")
    assert (item.get("jid"), item.get("subscription"), item.get("approved")) == (alice_jid, "none", "true")
    assert (await subscription(server, "bob", alice_jid)) == RosterItem(alice_jid, approved=True)

    alice, alice_inbox = await login_with_inbox(clients, alice_jid, answer=False)
    alice.send_presence(pto=bob_jid, ptype="subscribe")

    await alice_inbox.receives("subscribed", bob_jid)
    await alice_inbox.receives("available", str(bob.boundjid))
    await bob_inbox.never_receives("subscribe", alice_jid)
    assert (await subscription(server, "bob", alice_jid)) == RosterItem(alice_jid, subscription="from")
    assert (await subscription(server, "alice", bob_jid)) == RosterItem(bob_jid, subscription="to")


async def test_pre_approval_is_cancelled_by_unsubscribed(server: Server, clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    bob = await clients.login(bob_jid, setup=manual)
    bob.send_presence(pto=alice_jid, ptype="subscribed")
    await eventually(server, "bob", alice_jid, RosterItem(alice_jid, approved=True))

    bob.send_presence(pto=alice_jid, ptype="unsubscribed")  # §3.4.1: cancelled

    await eventually(server, "bob", alice_jid, RosterItem(alice_jid))
    alice, alice_inbox = await login_with_inbox(clients, alice_jid, answer=False)
    alice.send_presence(pto=bob_jid, ptype="subscribe")
    await alice_inbox.never_receives("subscribed", bob_jid)


async def test_removing_a_contact_ends_the_subscription_on_both_sides(
    server: Server, clients: Clients
) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    await befriend(server, alice_jid, bob_jid)
    bob, bob_inbox = await login_with_inbox(clients, bob_jid, answer=False)
    await bob.get_roster()
    alice = await clients.login(alice_jid)
    await bob_inbox.receives("available", str(alice.boundjid))

    await alice.del_roster_item(bob_jid)

    await bob_inbox.receives("unsubscribe", alice_jid)  # §2.5.2
    await bob_inbox.receives("unsubscribed", alice_jid)
    await bob_inbox.receives("unavailable", str(alice.boundjid))
    await wait_for(lambda: bob.client_roster[alice_jid]["subscription"] == "none")
    assert await subscription(server, "alice", bob_jid) is None
    assert (await subscription(server, "bob", alice_jid)) == RosterItem(alice_jid)


async def test_unsubscribing_stops_the_contacts_presence(server: Server, clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    await befriend(server, alice_jid, bob_jid)
    bob = await clients.login(bob_jid)
    alice, alice_inbox = await login_with_inbox(clients, alice_jid, answer=False)
    await alice_inbox.receives("available", str(bob.boundjid))

    alice.send_presence(pto=bob_jid, ptype="unsubscribe")

    await alice_inbox.receives("unavailable", str(bob.boundjid))  # §3.3.3: bob's server says goodbye
    assert (await subscription(server, "alice", bob_jid)) == RosterItem(bob_jid, subscription="from")
    assert (await subscription(server, "bob", alice_jid)) == RosterItem(alice_jid, subscription="to")
    bob.send_presence(pstatus="still here")
    await asyncio.sleep(0.3)
    assert not [
        p for p in alice_inbox.matching("available", str(bob.boundjid)) if p["status"] == "still here"
    ]


async def test_subscribing_to_a_user_who_does_not_exist_is_refused(server: Server, clients: Clients) -> None:
    alice_jid = await clients.user("alice")
    alice, alice_inbox = await login_with_inbox(clients, alice_jid, answer=False)

    alice.send_presence(pto="nobody@localhost", ptype="subscribe")

    await alice_inbox.receives("unsubscribed", "nobody@localhost")  # §3.1.3
    item = await subscription(server, "alice", "nobody@localhost")
    assert item is not None
    assert not item.ask


async def test_a_probe_is_answered_only_for_a_subscriber(server: Server, clients: Clients) -> None:
    alice_jid, bob_jid, carol_jid = [await clients.user(name) for name in ("alice", "bob", "carol")]
    await server.storage.rosters.put("bob", RosterItem(alice_jid, subscription="from"))
    await server.storage.rosters.put("carol", RosterItem(bob_jid, subscription="to"))  # bob never agreed
    bob, bob_inbox = await login_with_inbox(clients, bob_jid)
    await bob_inbox.receives("available", str(bob.boundjid))
    alice, alice_inbox = await login_with_inbox(clients, alice_jid, send_presence=False)

    alice.send_presence(pto=bob_jid, ptype="probe")  # a client may probe too
    await alice_inbox.receives("available", str(bob.boundjid))  # §4.3.2

    # carol's initial presence probes bob; bob's server refuses, and carol's roster is put right.
    _carol, carol_inbox = await login_with_inbox(clients, carol_jid, answer=False)
    await carol_inbox.receives("unsubscribed", bob_jid)
    assert carol_inbox.matching("available", str(bob.boundjid)) == []
    assert (await subscription(server, "carol", bob_jid)) == RosterItem(bob_jid)


async def test_directed_presence_is_delivered_and_undone_when_the_sender_disconnects(
    clients: Clients,
) -> None:
    alice_jid, carol_jid = await clients.user("alice"), await clients.user("carol")
    carol, carol_inbox = await login_with_inbox(clients, carol_jid)
    alice = await clients.login(alice_jid)
    await carol_inbox.never_receives("available", str(alice.boundjid))  # not subscribed: no broadcast

    alice.send_presence(pto=str(carol.boundjid), pstatus="hello carol")  # §4.6
    directed = await carol_inbox.receives("available", str(alice.boundjid))
    assert directed["status"] == "hello carol"

    alice.abort()
    await carol_inbox.receives("unavailable", str(alice.boundjid))  # §4.6.3


async def test_directed_unavailable_takes_the_recipient_off_the_list(
    server: Server, clients: Clients
) -> None:
    alice_jid, carol_jid = await clients.user("alice"), await clients.user("carol")
    _carol, carol_inbox = await login_with_inbox(clients, carol_jid)
    alice = await clients.login(alice_jid)
    alice.send_presence(pto=carol_jid)
    await carol_inbox.receives("available", str(alice.boundjid))
    assert session_of(server, alice).directed_to == {JID.parse(carol_jid)}

    alice.send_presence(pto=carol_jid, ptype="unavailable")
    await carol_inbox.receives("unavailable", str(alice.boundjid))
    await wait_for(lambda: session_of(server, alice).directed_to == set())


async def test_explicit_unavailable_is_broadcast_and_ends_availability(
    server: Server, clients: Clients
) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    await befriend(server, alice_jid, bob_jid)
    _bob, bob_inbox = await login_with_inbox(clients, bob_jid)
    alice = await clients.login(alice_jid)
    await bob_inbox.receives("available", str(alice.boundjid))
    session = session_of(server, alice)
    assert session.available

    alice.send_presence(ptype="unavailable", pstatus="gone fishing")

    gone = await bob_inbox.receives("unavailable", str(alice.boundjid))
    assert gone["status"] == "gone fishing"
    assert not session.available


async def test_priority_is_recorded_and_clamped(server: Server, clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"))
    session = session_of(server, alice)
    await wait_for(lambda: session.available)
    assert session.priority == 0

    alice.send_presence(ppriority=5)
    await wait_for(lambda: session.priority == 5)
    alice.send_raw("<presence><priority>300</priority></presence>")
    await wait_for(lambda: session.priority == 127)
    alice.send_raw("<presence><priority>-300</priority></presence>")
    await wait_for(lambda: session.priority == -128)


async def test_bad_presence_is_answered_with_bad_request(server: Server, clients: Clients) -> None:
    alice_jid = await clients.user("alice")
    alice, inbox = await login_with_inbox(clients, alice_jid)
    session = session_of(server, alice)
    await wait_for(lambda: session.available)

    alice.send_raw("<presence id='p1'><priority>high</priority></presence>")
    alice.send_raw("<presence id='p2' type='bogus'/>")
    alice.send_raw("<presence id='p3' type='subscribe'/>")  # a request to nobody

    await wait_for(lambda: len([p for p in inbox.stanzas if p["type"] == "error"]) == 3)
    errors = {
        p["id"]: (p["error"]["type"], p["error"]["condition"]) for p in inbox.stanzas if p["type"] == "error"
    }
    assert errors == {k: ("modify", "bad-request") for k in ("p1", "p2", "p3")}
    assert session.priority == 0


async def test_initial_presence_event_fires_once_per_initial_presence(
    server: Server, clients: Clients
) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    await befriend(server, alice_jid, bob_jid)
    bob, bob_inbox = await login_with_inbox(clients, bob_jid)
    await bob_inbox.receives("available", str(bob.boundjid))
    fired: list[tuple[str, bool]] = []

    async def on_initial(event: SessionEvent) -> None:
        fired.append((str(event.session.jid), event.session.available))

    server.bus.add("initial-presence", on_initial)
    alice = await clients.login(alice_jid)
    await bob_inbox.receives("available", str(alice.boundjid))
    await wait_for(lambda: bool(fired))
    alice.send_presence(pstatus="subsequent")  # not initial: no second event
    await bob_inbox.receives("available", str(alice.boundjid))
    await asyncio.sleep(0.2)
    assert fired == [(str(alice.boundjid), True)]


async def test_a_strangers_request_is_not_on_the_roster_until_approved(
    server: Server, clients: Clients
) -> None:
    alice_jid, eve_jid = await clients.user("alice"), await clients.user("eve")
    alice, alice_inbox = await login_with_inbox(clients, alice_jid, answer=False)
    eve, _ = await login_with_inbox(clients, eve_jid, answer=False)

    eve.send_presence(pto=alice_jid, ptype="subscribe")  # eve asks; alice never added eve
    await alice_inbox.receives("subscribe", eve_jid)
    stored = await server.storage.rosters.get("alice")
    assert [item.in_roster for item in stored.items] == [False]  # kept to re-deliver the request...
    query = alice.make_iq_get(queryxmlns="jabber:iq:roster")
    answer = await query.send(timeout=5)
    shown = [item.get("jid") for item in answer.xml.iter("{jabber:iq:roster}item")]
    assert eve_jid not in shown  # ...but not shown (RFC 6121 A.1)

    alice.send_presence(pto=eve_jid, ptype="subscribed")  # alice approves: now eve is on her roster
    await eventually(server, "alice", eve_jid, RosterItem(eve_jid, subscription="from"))
    await wait_for(lambda: alice.client_roster[eve_jid]["subscription"] == "from")  # pushed


async def test_a_broadcast_makes_no_copy_for_a_contact_with_no_available_resource(
    server: Server, clients: Clients
) -> None:
    """§4.2.2 and §8.5.2.2.2: carol is offline and bob bound but not yet available: neither copy would be
    delivered, so neither is made; dave, available, gets his."""
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    carol_jid, dave_jid = await clients.user("carol"), await clients.user("dave")
    for contact in (bob_jid, carol_jid, dave_jid):
        await befriend(server, alice_jid, contact)
    made: list[str] = []

    async def seen(event: PresenceRecipients) -> None:
        if str(event.from_.bare) == alice_jid:
            made.extend(str(to) for to in event.recipients if to.is_bare)  # contacts (own resources: full)

    _bob, bob_inbox = await login_with_inbox(clients, bob_jid, send_presence=False)
    _dave, dave_inbox = await login_with_inbox(clients, dave_jid)
    server.bus.add(PRESENCE_RECIPIENTS, seen, priority=100)
    alice = await clients.login(alice_jid)
    await dave_inbox.receives("available", str(alice.boundjid))
    alice.disconnect()
    await dave_inbox.receives("unavailable", str(alice.boundjid))
    assert made == [dave_jid, dave_jid]
    assert bob_inbox.matching("available", str(alice.boundjid)) == []


async def test_stanza_filters_see_the_copies_for_offline_contacts_too(
    server: Server, clients: Clients
) -> None:
    """Plugins' filters see every stanza the router would route: with one registered, nothing is skipped."""
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    await befriend(server, alice_jid, bob_jid)
    filtered: list[tuple[str | None, str]] = []

    async def look(payload: RoutedStanza) -> Verdict:
        if payload.stanza.tag.endswith("presence") and str(payload.from_.bare) == alice_jid:
            filtered.append((payload.stanza.get("type"), str(payload.to)))
        return PASS

    server.bus.add_filter(STANZA_FILTER, look)
    alice, alice_inbox = await login_with_inbox(clients, alice_jid)
    await alice_inbox.receives("available", str(alice.boundjid))
    await wait_for(lambda: (None, bob_jid) in filtered)


async def test_a_contact_stored_with_a_full_jid_gets_the_broadcast_while_that_resource_is_bound(
    server: Server, clients: Clients
) -> None:
    """§8.5.3.1: presence for a full JID goes to that resource if it is connected, available or not."""
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    await server.storage.rosters.put("alice", RosterItem(f"{bob_jid}/desk", subscription="from"))
    _desk, desk_inbox = await login_with_inbox(clients, f"{bob_jid}/desk", send_presence=False)
    alice = await clients.login(alice_jid)
    await desk_inbox.receives("available", str(alice.boundjid))
