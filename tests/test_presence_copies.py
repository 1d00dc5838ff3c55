"""Presence copies the server sends on a user's behalf (broadcasts and probe answers, RFC 6121 §4) as
transcripts: blocking (XEP-0191 §3.3) keeps them from a blocked contact both ways, a stanza filter still
sees each copy and can drop it, and a failing presence-recipients hook lets no copy out."""

from __future__ import annotations

import pytest
import slixmpp
from conftest import Clients
from test_presence import befriend, login_with_inbox

from nitro.core.events import (
    PASS,
    PRESENCE_RECIPIENTS,
    STANZA_FILTER,
    Drop,
    PresenceRecipients,
    RoutedStanza,
    Verdict,
)
from nitro.server import Server


async def test_a_blocked_contact_gets_no_copy_and_sends_none_through(
    server: Server, clients: Clients
) -> None:
    """alice blocks bob; carol is a contact of both. Nothing alice's server sends for her reaches bob (her
    initial presence, her probe answer, her unavailable), and nothing sent for bob reaches her."""
    alice_jid, bob_jid, carol_jid = [await clients.user(name) for name in ("alice", "bob", "carol")]
    for one, other in ((alice_jid, bob_jid), (alice_jid, carol_jid), (bob_jid, carol_jid)):
        await befriend(server, one, other)
    await server.storage.blocklist.add("alice", ["bob@localhost"])
    bob, bob_inbox = await login_with_inbox(clients, bob_jid)
    carol, carol_inbox = await login_with_inbox(clients, carol_jid)
    await carol_inbox.receives("available", str(bob.boundjid))

    alice, alice_inbox = await login_with_inbox(clients, alice_jid)
    await carol_inbox.receives("available", str(alice.boundjid))  # alice's broadcast went out...
    await alice_inbox.receives("available", str(carol.boundjid))  # ...and her probes were answered
    await bob_inbox.never_receives("available", str(alice.boundjid))  # not to bob: she blocks him
    assert alice_inbox.matching("available", str(bob.boundjid)) == []  # nor bob's answer to her

    bob.send_presence(pshow="away")  # bob's broadcast: carol gets it, alice (who blocks him) does not
    await carol_inbox.receives("away", str(bob.boundjid))  # slixmpp gives the <show/> as the type
    await alice_inbox.never_receives("away", str(bob.boundjid))

    alice.disconnect()
    await carol_inbox.receives("unavailable", str(alice.boundjid))
    await bob_inbox.never_receives("unavailable", str(alice.boundjid))

    # bob, logging in again, is not told of alice either: her answer to his probe is blocked too
    alice, alice_inbox = await login_with_inbox(clients, alice_jid)
    await carol_inbox.receives("available", str(alice.boundjid))
    second, second_inbox = await login_with_inbox(clients, f"{bob_jid}/second")
    await second_inbox.receives("available", str(carol.boundjid))
    await second_inbox.never_receives("available", str(alice.boundjid))
    assert alice_inbox.matching("available", str(second.boundjid)) == []


async def test_a_stanza_filter_sees_each_copy_and_can_drop_one(server: Server, clients: Clients) -> None:
    """A plugin's filter sees every broadcast copy: dropping alice's copy for bob keeps it from bob only."""
    alice_jid, bob_jid, carol_jid = [await clients.user(name) for name in ("alice", "bob", "carol")]
    await befriend(server, alice_jid, bob_jid)
    await befriend(server, alice_jid, carol_jid)
    seen: list[tuple[str | None, str]] = []

    async def drop_for_bob(payload: RoutedStanza) -> Verdict:
        if payload.stanza.tag.endswith("presence") and str(payload.from_.bare) == alice_jid:
            seen.append((payload.stanza.get("type"), str(payload.to)))
            if str(payload.to) == bob_jid:
                return Drop()
        return PASS

    _bob, bob_inbox = await login_with_inbox(clients, bob_jid)
    _carol, carol_inbox = await login_with_inbox(clients, carol_jid)
    server.bus.add_filter(STANZA_FILTER, drop_for_bob)
    alice, alice_inbox = await login_with_inbox(clients, alice_jid)
    await carol_inbox.receives("available", str(alice.boundjid))
    await alice_inbox.receives("available", str(alice.boundjid))  # her own resource's copy, filtered too
    await bob_inbox.never_receives("available", str(alice.boundjid))
    assert {(None, bob_jid), (None, carol_jid), (None, str(alice.boundjid))} <= set(seen)
    alice.disconnect()
    await carol_inbox.receives("unavailable", str(alice.boundjid))
    await bob_inbox.never_receives("unavailable", str(alice.boundjid))
    assert ("unavailable", bob_jid) in seen


async def test_a_failing_recipients_hook_sends_no_copy_and_the_session_goes_on(
    server: Server, clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    """A presence-recipients hook that raises is logged, and nobody gets a copy it could not vet (the
    router drops a stanza whose handler fails the same way); the user's session is unaffected."""
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    await befriend(server, alice_jid, bob_jid)

    async def broken(event: PresenceRecipients) -> None:
        raise RuntimeError("a broken hook")

    _bob, bob_inbox = await login_with_inbox(clients, bob_jid)
    server.bus.add(PRESENCE_RECIPIENTS, broken, priority=100)
    alice, _alice_inbox = await login_with_inbox(clients, alice_jid)
    await alice.plugin["xep_0199"].send_ping(slixmpp.JID("localhost"), timeout=5)  # still served
    await bob_inbox.never_receives("available", str(alice.boundjid))
    assert "a presence-recipients hook failed" in caplog.text
