"""Stanza filters through a running server: alice writes to bob while in-process filters pass, drop (with the
error alice then gets), replace, time out or fail, under a fail-open or fail-closed policy."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import slixmpp
from conftest import DOMAIN, Clients, wait_for
from lxml import etree

from nitro.core.events import STANZA_FILTER, Drop, FailurePolicy, Pass, Replace, RoutedStanza, Verdict
from nitro.core.module import Module
from nitro.server import Server
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.jid import JID
from nitro.xmpp.stanza import child, stanza

MESSAGE = "{jabber:client}message"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
Filter = Callable[[RoutedStanza], Awaitable[Verdict]]


class Chat:
    """alice and bob online, bob's inbox and alice's errors: a test reads "alice sends …, bob receives …"."""

    def __init__(self, alice: slixmpp.ClientXMPP, bob: slixmpp.ClientXMPP, bob_jid: str) -> None:
        self.alice, self.bob, self.bob_jid = alice, bob, bob_jid
        self.inbox: list[Any] = []
        self.errors: list[Any] = []
        bob.add_event_handler("message", self.inbox.append)
        alice.add_event_handler("message_error", self.errors.append)

    def send(self, body: str, id_: str = "m1") -> None:
        message = self.alice.make_message(mto=slixmpp.JID(self.bob_jid), mbody=body, mtype="chat")
        message["id"] = id_
        message.send()

    async def settled(self) -> None:
        """Both clients have had everything the server sent them before a ping's answer."""
        for client in (self.alice, self.bob):
            await client.plugin["xep_0199"].send_ping(slixmpp.JID(DOMAIN), timeout=5)

    def bodies(self) -> list[str]:
        return [message["body"] for message in self.inbox]


async def chat(clients: Clients) -> Chat:
    alice = await clients.login(await clients.user("alice"))
    bob_jid = await clients.user("bob")
    bob = await clients.login(bob_jid)
    return Chat(alice, bob, bob_jid)


def messages_only(verdict: Filter) -> Filter:
    """Apply `verdict` to messages with a body; pass everything else (logins, presence, pings)."""

    async def only(event: RoutedStanza) -> Verdict:
        if event.stanza.tag != MESSAGE or event.stanza.find("{jabber:client}body") is None:
            return Pass()
        return await verdict(event)

    return only


def wire_error(message: Any) -> tuple[str | None, list[str], str | None]:
    """(type, conditions, text) as on the wire (slixmpp does not know every RFC 6120 condition)."""
    error = message.xml.find("{jabber:client}error")
    assert error is not None
    names = [etree.QName(node.tag).localname for node in error if node.tag.startswith(f"{{{STANZAS}}}")]
    return error.get("type"), [name for name in names if name != "text"], error.findtext(f"{{{STANZAS}}}text")


def rewritten(event: RoutedStanza, body: str) -> etree._Element:
    replacement = stanza("message", to=event.stanza.get("to") or "", from_=event.stanza.get("from") or "")
    replacement.set("type", "chat")
    child(replacement, "jabber:client", "body", body)
    return replacement


async def test_a_passing_filter_sees_the_stanza_and_lets_it_through(server: Server, clients: Clients) -> None:
    talk = await chat(clients)
    seen: list[RoutedStanza] = []

    async def look(event: RoutedStanza) -> Verdict:
        seen.append(event)
        return Pass()

    server.bus.add_filter(STANZA_FILTER, messages_only(look))
    talk.send("hello")

    await wait_for(lambda: talk.bodies() == ["hello"])
    assert [(event.origin, event.from_, event.to) for event in seen] == [
        (JID.parse(str(talk.alice.boundjid)), JID.parse(str(talk.alice.boundjid)), JID.parse(talk.bob_jid))
    ]


async def test_a_drop_with_an_error_bounces_exactly_that_error(server: Server, clients: Clients) -> None:
    talk = await chat(clients)

    async def refuse(event: RoutedStanza) -> Verdict:
        return Drop(StanzaError("policy-violation", "no shouting"))

    server.bus.add_filter(STANZA_FILTER, messages_only(refuse))
    talk.send("HELLO", id_="loud")

    await wait_for(lambda: len(talk.errors) == 1)
    error = talk.errors[0]
    assert (error["id"], str(error["from"])) == ("loud", talk.bob_jid)
    assert wire_error(error) == ("modify", ["policy-violation"], "no shouting")
    await talk.settled()
    assert talk.inbox == []


async def test_a_silent_drop_tells_nobody(server: Server, clients: Clients) -> None:
    talk = await chat(clients)

    async def swallow(event: RoutedStanza) -> Verdict:
        return Drop()

    server.bus.add_filter(STANZA_FILTER, messages_only(swallow))
    talk.send("psst")

    await talk.settled()
    assert (talk.inbox, talk.errors) == ([], [])


async def test_a_replacement_is_what_bob_receives(server: Server, clients: Clients) -> None:
    talk = await chat(clients)

    async def censor(event: RoutedStanza) -> Verdict:
        return Replace(rewritten(event, "[redacted]"))

    server.bus.add_filter(STANZA_FILTER, messages_only(censor))
    talk.send("the password is hunter2")

    await wait_for(lambda: talk.bodies() == ["[redacted]"])
    assert str(talk.inbox[0]["from"]) == str(talk.alice.boundjid)


async def test_two_filters_run_in_priority_order(server: Server, clients: Clients) -> None:
    talk = await chat(clients)
    order: list[str] = []

    async def translate(event: RoutedStanza) -> Verdict:
        order.append(f"translate {event.stanza.findtext('{jabber:client}body')}")
        return Replace(rewritten(event, "bonjour"))

    async def sign(event: RoutedStanza) -> Verdict:
        body = event.stanza.findtext("{jabber:client}body")
        order.append(f"sign {body}")
        return Replace(rewritten(event, f"{body} -- alice"))

    server.bus.add_filter(STANZA_FILTER, messages_only(sign), priority=-1)
    server.bus.add_filter(STANZA_FILTER, messages_only(translate), priority=10)
    talk.send("hello")

    await wait_for(lambda: talk.bodies() == ["bonjour -- alice"])
    assert order == ["translate hello", "sign bonjour"]


async def slow(event: RoutedStanza) -> Verdict:
    await asyncio.sleep(30)
    return Drop()


async def test_a_slow_filter_fails_open_and_the_message_is_delivered(
    server: Server, clients: Clients
) -> None:
    talk = await chat(clients)
    server.bus.add_filter(STANZA_FILTER, messages_only(slow), timeout=0.2, policy=FailurePolicy.OPEN)

    talk.send("still here")

    await wait_for(lambda: talk.bodies() == ["still here"])
    assert talk.errors == []


async def test_a_slow_filter_fails_closed_and_alice_gets_wait(server: Server, clients: Clients) -> None:
    talk = await chat(clients)
    server.bus.add_filter(STANZA_FILTER, messages_only(slow), timeout=0.2, policy=FailurePolicy.CLOSED)

    talk.send("anyone?", id_="late")

    await wait_for(lambda: len(talk.errors) == 1)
    error = talk.errors[0]
    assert error["id"] == "late"
    assert (error["error"]["type"], error["error"]["condition"]) == ("wait", "internal-server-error")
    await talk.settled()
    assert talk.inbox == []


async def test_a_raising_filter_applies_its_policy_and_others_keep_talking(
    server: Server, clients: Clients
) -> None:
    talk = await chat(clients)
    carol_jid = await clients.user("carol")
    carol_inbox: list[Any] = []
    carol = await clients.login(carol_jid, setup=lambda c: c.add_event_handler("message", carol_inbox.append))

    async def broken_for_alice(event: RoutedStanza) -> Verdict:
        if event.from_.local == "alice":
            raise RuntimeError("filter bug")
        return Pass()

    server.bus.add_filter(STANZA_FILTER, messages_only(broken_for_alice), policy=FailurePolicy.CLOSED)
    talk.send("hi bob")
    talk.bob.send_message(mto=slixmpp.JID(carol_jid), mbody="hi carol", mtype="chat")

    await wait_for(lambda: len(talk.errors) == 1)
    assert talk.errors[0]["error"]["condition"] == "internal-server-error"
    await wait_for(lambda: [message["body"] for message in carol_inbox] == ["hi carol"])
    await talk.settled()  # alice's stream is fine too
    assert talk.inbox == []
    assert carol.authenticated


async def test_server_originated_stanzas_are_filtered_too(server: Server, clients: Clients) -> None:
    talk = await chat(clients)
    seen: list[JID | None] = []

    async def stamp(event: RoutedStanza) -> Verdict:
        seen.append(event.origin)
        return Replace(rewritten(event, "announcement (filtered)"))

    server.bus.add_filter(STANZA_FILTER, messages_only(stamp))
    announcement = stanza("message", from_=DOMAIN, to=talk.bob_jid, type="headline")
    child(announcement, "jabber:client", "body", "announcement")

    await server.router.route(announcement)

    await wait_for(lambda: talk.bodies() == ["announcement (filtered)"])
    assert seen == [None]  # the server sent it, no client session


async def test_unloading_a_module_removes_exactly_its_filters(server: Server, clients: Clients) -> None:
    talk = await chat(clients)

    async def refuse(event: RoutedStanza) -> Verdict:
        return Drop(StanzaError("not-allowed", "moderated"))

    async def upper(event: RoutedStanza) -> Verdict:
        return Replace(rewritten(event, (event.stanza.findtext("{jabber:client}body") or "").upper()))

    moderation, shouting = Module(server, "moderation"), Module(server, "shouting")
    moderation.filter(STANZA_FILTER, messages_only(refuse), priority=5)
    shouting.filter(STANZA_FILTER, messages_only(upper))
    talk.send("first", id_="one")
    await wait_for(lambda: len(talk.errors) == 1)

    moderation.unload()
    talk.send("second", id_="two")

    await wait_for(lambda: talk.bodies() == ["SECOND"])
    assert [error["id"] for error in talk.errors] == ["one"]
    shouting.unload()
    assert not server.bus.has_filters(STANZA_FILTER)
