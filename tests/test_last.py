"""Last Activity (XEP-0012) as transcripts: the server's uptime, a contact's last logout, and who may ask."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable

import pytest
import slixmpp
from conftest import DOMAIN, Clients
from slixmpp.exceptions import IqError

from nitro.server import Server
from nitro.storage.models import LastActivity, RosterItem, Subscription
from nitro.xmpp import ns

LAST = "jabber:iq:last"


async def last(client: slixmpp.ClientXMPP, to: str | None) -> tuple[int, str]:
    """Ask `to` (None: one's own account) for its last activity: (seconds, status text)."""
    answer = await client.make_iq_get(queryxmlns=LAST, ito=to).send(timeout=5)
    query = answer.xml.find(f"{{{LAST}}}query")
    assert query is not None
    return int(query.get("seconds")), query.text or ""


async def refused(client: slixmpp.ClientXMPP, to: str) -> str:
    with pytest.raises(IqError) as caught:
        await client.make_iq_get(queryxmlns=LAST, ito=to).send(timeout=5)
    return str(caught.value.iq["error"]["condition"])


async def friends(server: Server, a: str, b: str, subscription: Subscription = "both") -> None:
    """`b` sees `a`'s presence (a has b as 'from' or 'both'), and the reverse for 'both'."""
    reverses: dict[Subscription, Subscription] = {"both": "both", "from": "to", "to": "from"}
    reverse = reverses[subscription]
    await server.storage.rosters.put(a.split("@")[0], RosterItem(b, subscription=subscription))
    await server.storage.rosters.put(b.split("@")[0], RosterItem(a, subscription=reverse))


async def stored(
    server: Server, username: str, wanted: Callable[[LastActivity], bool] = lambda _activity: True
) -> LastActivity:
    """What is stored for `username` once it is there and `wanted` (polled, bounded)."""
    for _ in range(250):
        activity = await server.storage.last.get(username)
        if activity is not None and wanted(activity):
            return activity
        await asyncio.sleep(0.02)
    raise AssertionError(f"no such last activity stored for {username}")


async def test_the_server_answers_with_its_uptime(server: Server, clients: Clients) -> None:
    """XEP-0012 §5: a query to the server's JID gives the seconds since it started."""
    alice = await clients.login(await clients.user("alice"))
    before = await last(alice, DOMAIN)
    await asyncio.sleep(1.1)
    after = await last(alice, DOMAIN)
    assert 0 <= before[0] < after[0] < before[0] + 10
    assert after[1] == ""


async def test_an_online_contact_was_active_zero_seconds_ago(server: Server, clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    await friends(server, alice_jid, bob_jid)
    await clients.login(alice_jid)
    bob = await clients.login(bob_jid)

    assert await last(bob, alice_jid) == (0, "")  # §4: at least one available resource
    assert await last(bob, None) == (0, "")  # one's own account, no 'to'
    assert await last(bob, bob_jid) == (0, "")


async def test_an_offline_contacts_logout_time_and_status(server: Server, clients: Clients) -> None:
    """§4: the seconds since the last unavailable presence, with its status as the query's text."""
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    await friends(server, alice_jid, bob_jid)
    alice = await clients.login(alice_jid)
    bob = await clients.login(bob_jid)

    alice.send_presence(ptype="unavailable", pstatus="Gone to Mantua")
    kept = await stored(server, "alice")
    assert kept.status == "Gone to Mantua"
    seconds, status = await last(bob, alice_jid)
    assert 0 <= seconds < 5
    assert status == "Gone to Mantua"

    # a logout two minutes ago reads as 120 seconds
    two_minutes_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=120)
    await server.storage.last.set("alice", LastActivity(two_minutes_ago, "Gone to Mantua"))
    seconds, _ = await last(bob, alice_jid)
    assert 120 <= seconds < 125


async def test_a_session_that_just_ends_is_recorded_too(server: Server, clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    await friends(server, alice_jid, bob_jid)
    alice = await clients.login(alice_jid)
    alice.send_presence(ptype="unavailable", pstatus="brb")
    await stored(server, "alice", lambda activity: activity.status == "brb")
    alice.send_presence(pstatus="back")  # available again; then the connection drops
    await alice.plugin["xep_0199"].ping(slixmpp.JID(DOMAIN), timeout=5)  # the presence before it is handled

    alice.abort()  # no unavailable presence: the server sends one for her (RFC 6121 §4.5.2) and records it
    await stored(server, "alice", lambda activity: activity.status == "")  # "brb" does not stick
    bob = await clients.login(bob_jid)
    seconds, status = await last(bob, alice_jid)
    assert 0 <= seconds < 5
    assert status == ""


async def test_only_the_user_and_subscribed_contacts_may_ask(server: Server, clients: Clients) -> None:
    """§4: without a subscription to the user's presence, forbidden; the same for no such account."""
    alice_jid, bob_jid, eve_jid = [await clients.user(name) for name in ("alice", "bob", "eve")]
    await friends(server, alice_jid, bob_jid, subscription="to")  # alice sees bob; bob does not see alice
    await server.storage.last.set("alice", LastActivity(datetime.datetime.now(datetime.UTC), "away"))
    bob = await clients.login(bob_jid)
    eve = await clients.login(eve_jid)

    assert await refused(bob, alice_jid) == "forbidden"
    assert await refused(eve, alice_jid) == "forbidden"
    assert await refused(eve, f"nobody@{DOMAIN}") == "forbidden"  # reveals nothing about the account
    await server.storage.rosters.put("alice", RosterItem(bob_jid, subscription="from"))
    assert (await last(bob, alice_jid))[1] == "away"  # 'from' is enough


async def test_an_account_never_seen_offline_has_no_last_activity(server: Server, clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    await friends(server, alice_jid, bob_jid)
    bob = await clients.login(bob_jid)
    assert await refused(bob, alice_jid) == "service-unavailable"  # as ejabberd answers


async def test_last_activity_is_advertised(server: Server, clients: Clients) -> None:
    """§6: in the server's disco#info, and in the account's for those allowed to see it."""
    alice_jid = await clients.user("alice")
    alice = await clients.login(alice_jid)
    server_info = await alice.plugin["xep_0030"].get_info(jid=slixmpp.JID(DOMAIN), local=False)
    assert LAST in server_info["disco_info"]["features"]
    assert ns.PING in server_info["disco_info"]["features"]
    account_info = await alice.plugin["xep_0030"].get_info(jid=slixmpp.JID(alice_jid), local=False)
    assert LAST in account_info["disco_info"]["features"]
