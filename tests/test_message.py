"""Message delivery (RFC 6121 §8.5) as transcripts: alice sends; bob receives, or alice gets an error."""

from __future__ import annotations

from typing import Any

import slixmpp
from conftest import DOMAIN, Clients, wait_for
from slixmpp.types import MessageTypes

from nitro.core.context import Session
from nitro.server import Server
from nitro.xmpp.jid import JID

STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def session_of(server: Server, client: slixmpp.ClientXMPP) -> Session | None:
    return server.sessions.get(JID.parse(str(client.boundjid)))


async def online(clients: Clients, jid: str, priority: int = 0) -> tuple[slixmpp.ClientXMPP, list[Any]]:
    """Log `jid` in, send available presence with `priority`, collect the messages (with a body) it gets."""
    received: list[Any] = []
    client = await clients.login(
        jid, send_presence=False, setup=lambda c: c.add_event_handler("message", received.append)
    )
    client.send_presence(ppriority=priority)

    def ready() -> bool:
        session = session_of(clients.server, client)
        return session is not None and session.available and session.priority == priority

    await wait_for(ready)
    return client, received


def errors_of(client: slixmpp.ClientXMPP) -> list[Any]:
    errors: list[Any] = []
    client.add_event_handler("message_error", errors.append)
    return errors


async def roundtrip(client: slixmpp.ClientXMPP) -> None:
    """Ping the server: everything the server sent this client before the answer has been handled."""
    await client.plugin["xep_0199"].send_ping(slixmpp.JID(DOMAIN), timeout=5)


def condition(error_message: Any) -> str | None:
    node = error_message.xml.find("{jabber:client}error")
    assert node is not None
    names = [child.tag.split("}")[1] for child in node if child.tag.startswith(f"{{{STANZAS}}}")]
    return next((name for name in names if name != "text"), None)


def send(
    client: slixmpp.ClientXMPP, to: str, body: str, mtype: MessageTypes | None = "chat", id_: str = "m1"
) -> None:
    message = client.make_message(mto=to, mbody=body, mtype=mtype)
    message["id"] = id_
    message.send()


async def test_alice_sends_bob_a_chat(clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    _bob, inbox = await online(clients, bob_jid)

    send(alice, bob_jid, "Wherefore art thou?", id_="chat-1")

    await wait_for(lambda: len(inbox) == 1)
    message = inbox[0]
    assert str(message["from"]) == str(alice.boundjid)
    assert str(message["to"]) == bob_jid
    assert message["body"] == "Wherefore art thou?"
    assert message["id"] == "chat-1"
    assert message["type"] == "chat"


async def test_normal_message_reaches_the_highest_priority_resource(clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    _high, high_inbox = await online(clients, f"{bob_jid}/high", priority=5)
    low, low_inbox = await online(clients, f"{bob_jid}/low", priority=1)

    send(alice, bob_jid, "for the most available", mtype="normal")

    await wait_for(lambda: len(high_inbox) == 1)
    await roundtrip(low)
    assert low_inbox == []


async def test_chat_to_the_bare_jid_reaches_only_the_highest_priority(clients: Clients) -> None:
    # Prosody (top_resources) and ejabberd (ejabberd_sm:route_message) pick the highest priority for chat too;
    # other resources get copies through Message Carbons (XEP-0280), not here.
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    _high, high_inbox = await online(clients, f"{bob_jid}/high", priority=5)
    low, low_inbox = await online(clients, f"{bob_jid}/low", priority=1)

    send(alice, bob_jid, "chat")

    await wait_for(lambda: len(high_inbox) == 1)
    await roundtrip(low)
    assert low_inbox == []


async def test_resources_of_equal_highest_priority_all_receive(clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    _one, one_inbox = await online(clients, f"{bob_jid}/one", priority=3)
    _two, two_inbox = await online(clients, f"{bob_jid}/two", priority=3)

    send(alice, bob_jid, "to both", mtype="normal")

    await wait_for(lambda: len(one_inbox) == 1 and len(two_inbox) == 1)


async def test_headline_reaches_every_non_negative_resource(clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    _high, high_inbox = await online(clients, f"{bob_jid}/high", priority=5)
    _low, low_inbox = await online(clients, f"{bob_jid}/low", priority=0)
    hidden, hidden_inbox = await online(clients, f"{bob_jid}/hidden", priority=-1)

    send(alice, bob_jid, "news", mtype="headline")

    await wait_for(lambda: len(high_inbox) == 1 and len(low_inbox) == 1)
    await roundtrip(hidden)
    assert hidden_inbox == []


async def test_message_to_a_full_jid_reaches_that_resource_whatever_its_priority(clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    _high, high_inbox = await online(clients, f"{bob_jid}/high", priority=5)
    _hidden, hidden_inbox = await online(clients, f"{bob_jid}/hidden", priority=-1)

    send(alice, f"{bob_jid}/hidden", "just for you")

    await wait_for(lambda: len(hidden_inbox) == 1)
    assert str(hidden_inbox[0]["to"]) == f"{bob_jid}/hidden"
    assert high_inbox == []


async def test_full_jid_of_a_gone_resource_falls_back_to_the_bare_jid(clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    _bob, inbox = await online(clients, f"{bob_jid}/desk")

    send(alice, f"{bob_jid}/phone", "are you there?")

    await wait_for(lambda: len(inbox) == 1)
    assert inbox[0]["body"] == "are you there?"


async def test_headline_to_a_gone_resource_is_dropped_silently(clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    bob, inbox = await online(clients, f"{bob_jid}/desk")
    errors = errors_of(alice)

    send(alice, f"{bob_jid}/phone", "stale news", mtype="headline")

    await roundtrip(alice)
    await roundtrip(bob)
    assert inbox == []
    assert errors == []


async def test_message_to_a_user_who_does_not_exist_is_service_unavailable(clients: Clients) -> None:
    alice, _ = await online(clients, await clients.user("alice"))
    errors = errors_of(alice)

    send(alice, f"nobody@{DOMAIN}", "hello?", id_="lost-1")

    await wait_for(lambda: len(errors) == 1)
    assert condition(errors[0]) == "service-unavailable"
    assert errors[0]["id"] == "lost-1"
    assert str(errors[0]["from"]) == f"nobody@{DOMAIN}"


async def test_message_to_a_remote_domain_is_remote_server_not_found(clients: Clients) -> None:
    alice, _ = await online(clients, await clients.user("alice"))
    errors = errors_of(alice)

    send(alice, "juliet@capulet.example", "over the wall")

    await wait_for(lambda: len(errors) == 1)
    assert condition(errors[0]) == "remote-server-not-found"


async def test_groupchat_to_a_user_is_service_unavailable(clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    bob, inbox = await online(clients, bob_jid)
    errors = errors_of(alice)

    send(alice, bob_jid, "room talk", mtype="groupchat")

    await wait_for(lambda: len(errors) == 1)
    assert condition(errors[0]) == "service-unavailable"
    await roundtrip(bob)
    assert inbox == []


async def test_error_message_to_a_user_who_does_not_exist_gets_no_reply(clients: Clients) -> None:
    alice, _ = await online(clients, await clients.user("alice"))
    errors = errors_of(alice)

    alice.send_raw(
        f"<message to='nobody@{DOMAIN}' type='error' id='e1'>"
        f"<error type='cancel'><item-not-found xmlns='{STANZAS}'/></error></message>"
    )

    await roundtrip(alice)
    assert errors == []


async def test_message_to_the_server_is_service_unavailable(clients: Clients) -> None:
    alice, _ = await online(clients, await clients.user("alice"))
    errors = errors_of(alice)

    send(alice, DOMAIN, "hello server")

    await wait_for(lambda: len(errors) == 1)
    assert condition(errors[0]) == "service-unavailable"
    assert str(errors[0]["from"]) == DOMAIN


async def test_unknown_type_is_treated_as_normal(clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    _high, high_inbox = await online(clients, f"{bob_jid}/high", priority=5)
    low, low_inbox = await online(clients, f"{bob_jid}/low", priority=1)

    alice.send_raw(f"<message to='{bob_jid}' type='telepathy' id='t1'><body>odd</body></message>")

    await wait_for(lambda: len(high_inbox) == 1)
    await roundtrip(low)
    assert low_inbox == []


async def test_message_without_to_goes_to_the_senders_own_account(clients: Clients) -> None:
    alice, inbox = await online(clients, await clients.user("alice"))

    alice.send_raw("<message type='chat' id='self-1'><body>note to self</body></message>")

    await wait_for(lambda: len(inbox) == 1)
    assert inbox[0]["body"] == "note to self"
