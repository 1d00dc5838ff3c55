"""Rosters (RFC 6121 §2, XEP-0237) with real slixmpp clients: get, set, pushes, versions, remove, errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import slixmpp
from conftest import Clients, result_of, wait_for
from slixmpp import Iq
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET

from nitro.modules.roster import item_element
from nitro.server import Server
from nitro.storage.models import RosterItem
from nitro.xmpp import ns
from nitro.xmpp.stanza import element
from nitro.xmpp.xmlwrite import serialize

ROSTER = "jabber:iq:roster"


def roster_iq(client: slixmpp.ClientXMPP, kind: str, query: str, to: str | None = None) -> Any:
    iq = client.Iq()
    iq["type"] = kind
    if to is not None:
        iq["to"] = to
    iq.append(ET.fromstring(query))
    return iq


async def error_of(
    client: slixmpp.ClientXMPP, kind: str, query: str, to: str | None = None
) -> tuple[str, str]:
    """Send an IQ that must fail; its (error type, condition)."""
    with pytest.raises(IqError) as failure:
        await roster_iq(client, kind, query, to).send(timeout=5)
    error = failure.value.iq["error"]
    return error["type"], error["condition"]


def pushes(client: slixmpp.ClientXMPP) -> list[Any]:
    """Roster pushes (iq type='set') the client receives from now on."""
    received: list[Any] = []

    def on_update(iq: Iq) -> None:
        if iq["type"] == "set":
            received.append(iq)

    client.add_event_handler("roster_update", on_update)
    return received


async def test_stream_features_offer_roster_versioning_and_pre_approval(clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"), send_presence=False)
    assert {"rosterver", "preapproval"} <= alice.features


async def test_roster_set_then_get_returns_the_item_with_a_version(clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"), send_presence=False)
    await alice.get_roster()
    assert len(alice.client_roster) == 0
    await result_of(alice.update_roster(slixmpp.JID("bob@localhost"), name="Bob", groups=["Friends", "Work"]))

    result = await roster_iq(alice, "get", f"<query xmlns='{ROSTER}' ver=''/>").send(timeout=5)
    (item,) = result["roster"]["items"].values()
    assert item["name"] == "Bob"
    assert sorted(item["groups"]) == ["Friends", "Work"]
    assert item["subscription"] == "none"
    assert result["roster"]["ver"]


async def test_roster_push_reaches_every_interested_resource(clients: Clients) -> None:
    alice = await clients.user("alice")
    phone = await clients.login(f"{alice}/phone", send_presence=False)
    laptop = await clients.login(f"{alice}/laptop", send_presence=False)
    quiet = await clients.login(f"{alice}/quiet", send_presence=False)  # never asks for the roster
    await phone.get_roster()
    await laptop.get_roster()
    on_phone, on_laptop, on_quiet = pushes(phone), pushes(laptop), pushes(quiet)

    await result_of(phone.update_roster(slixmpp.JID("bob@localhost"), name="Bob"))

    await wait_for(lambda: bool(on_phone) and bool(on_laptop))
    assert on_laptop[0]["roster"]["items"]["bob@localhost"]["name"] == "Bob"
    assert on_laptop[0]["roster"]["ver"] == on_phone[0]["roster"]["ver"]
    assert laptop.client_roster["bob@localhost"]["name"] == "Bob"
    await asyncio.sleep(0.1)
    assert on_quiet == []  # RFC 6121 §2.1.6: only interested resources get pushes


async def test_unchanged_roster_version_gives_an_empty_result(clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"), send_presence=False)
    await result_of(alice.update_roster(slixmpp.JID("bob@localhost"), name="Bob"))
    first = await roster_iq(alice, "get", f"<query xmlns='{ROSTER}' ver=''/>").send(timeout=5)
    ver = first["roster"]["ver"]

    same = await roster_iq(alice, "get", f"<query xmlns='{ROSTER}' ver='{ver}'/>").send(timeout=5)
    assert same.xml.find(f"{{{ROSTER}}}query") is None  # XEP-0237 §3: nothing changed, nothing sent

    await result_of(alice.update_roster(slixmpp.JID("carol@localhost"), name="Carol"))
    newer = await roster_iq(alice, "get", f"<query xmlns='{ROSTER}' ver='{ver}'/>").send(timeout=5)
    assert set(newer["roster"]["items"]) == {"bob@localhost", "carol@localhost"}
    assert newer["roster"]["ver"] != ver


async def test_a_stale_client_gets_the_whole_roster_after_reconnecting(clients: Clients) -> None:
    alice_jid = await clients.user("alice")
    alice = await clients.login(alice_jid, send_presence=False)
    await alice.get_roster()
    cached = alice.client_roster.version
    await result_of(alice.update_roster(slixmpp.JID("bob@localhost"), name="Bob"))

    later = await clients.login(f"{alice_jid}/later", send_presence=False)
    result = await roster_iq(later, "get", f"<query xmlns='{ROSTER}' ver='{cached}'/>").send(timeout=5)
    assert list(result["roster"]["items"]) == ["bob@localhost"]


async def test_roster_remove_deletes_the_item_and_pushes_removal(server: Server, clients: Clients) -> None:
    alice_jid = await clients.user("alice")
    alice = await clients.login(alice_jid, send_presence=False)
    other = await clients.login(f"{alice_jid}/other", send_presence=False)
    await alice.get_roster()
    await other.get_roster()
    await result_of(alice.update_roster(slixmpp.JID("bob@localhost"), name="Bob"))
    await wait_for(lambda: "bob@localhost" in other.client_roster)
    seen = pushes(other)

    await alice.del_roster_item("bob@localhost")

    await wait_for(lambda: bool(seen))
    assert seen[0]["roster"]["items"]["bob@localhost"]["subscription"] == "remove"
    assert await server.storage.rosters.get_item("alice", "bob@localhost") is None


async def test_removing_an_absent_item_is_item_not_found(clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"), send_presence=False)
    query = f"<query xmlns='{ROSTER}'><item jid='nobody@localhost' subscription='remove'/></query>"
    assert await error_of(alice, "set", query) == ("cancel", "item-not-found")


async def test_roster_set_to_another_users_roster_is_forbidden(server: Server, clients: Clients) -> None:
    await clients.user("bob")
    alice = await clients.login(await clients.user("alice"), send_presence=False)
    query = f"<query xmlns='{ROSTER}'><item jid='mallory@localhost'/></query>"
    assert await error_of(alice, "set", query, to="bob@localhost") == ("auth", "forbidden")
    assert await error_of(alice, "get", f"<query xmlns='{ROSTER}'/>", to="bob@localhost") == (
        "auth",
        "forbidden",
    )
    assert (await server.storage.rosters.get("bob")).items == ()


async def test_roster_push_forged_by_a_client_is_forbidden(clients: Clients) -> None:
    bob = await clients.login(await clients.user("bob"), send_presence=False)
    alice = await clients.login(await clients.user("alice"), send_presence=False)
    seen = pushes(bob)
    query = f"<query xmlns='{ROSTER}'><item jid='mallory@localhost' name='trust me'/></query>"
    assert await error_of(alice, "set", query, to=str(bob.boundjid)) == ("auth", "forbidden")
    assert seen == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            f"<query xmlns='{ROSTER}'><item jid='bob@localhost'/><item jid='carol@localhost'/></query>",
            ("modify", "bad-request"),
        ),
        (f"<query xmlns='{ROSTER}'/>", ("modify", "bad-request")),
        (f"<query xmlns='{ROSTER}'><item name='no jid'/></query>", ("modify", "bad-request")),
        (f"<query xmlns='{ROSTER}'><item jid='bad@@localhost'/></query>", ("modify", "jid-malformed")),
        (f"<query xmlns='{ROSTER}'><item jid='bob@localhost/'/></query>", ("modify", "jid-malformed")),
        (
            f"<query xmlns='{ROSTER}'><item jid='bob@localhost'><group>A</group><group>A</group></item>"
            "</query>",
            ("modify", "bad-request"),
        ),
        (
            f"<query xmlns='{ROSTER}'><item jid='bob@localhost'><group/></item></query>",
            ("modify", "not-acceptable"),
        ),
        (
            f"<query xmlns='{ROSTER}'><item jid='bob@localhost' name='{'n' * 1024}'/></query>",
            ("modify", "not-acceptable"),
        ),
        (
            f"<query xmlns='{ROSTER}'><item jid='bob@localhost'><group>{'g' * 1024}</group></item></query>",
            ("modify", "not-acceptable"),
        ),
        (
            f"<query xmlns='{ROSTER}'><item jid='bob@localhost' subscription='pending'/></query>",
            ("modify", "bad-request"),
        ),
    ],
    ids=[
        "two-items",
        "no-item",
        "no-jid",
        "malformed-jid",
        "empty-resource",
        "group-twice",
        "empty-group",
        "name-too-long",
        "group-too-long",
        "bad-subscription",
    ],
)
async def test_invalid_roster_set_is_refused_and_changes_nothing(
    server: Server, clients: Clients, query: str, expected: tuple[str, str]
) -> None:
    alice = await clients.login(await clients.user("alice"), send_presence=False)
    assert await error_of(alice, "set", query) == expected
    assert (await server.storage.rosters.get("alice")).items == ()


async def test_roster_set_ignores_subscription_and_ask_sent_by_the_client(
    server: Server, clients: Clients
) -> None:
    alice = await clients.login(await clients.user("alice"), send_presence=False)
    query = f"<query xmlns='{ROSTER}'><item jid='bob@localhost' subscription='both' ask='subscribe'/></query>"
    await roster_iq(alice, "set", query).send(timeout=5)
    item = await server.storage.rosters.get_item("alice", "bob@localhost")
    assert item is not None
    assert (item.subscription, item.ask) == ("none", False)  # RFC 6121 §2.1.2.5, §2.3.3


def test_items_built_in_the_query_are_written_as_items_built_alone() -> None:
    """§2.1.2: the roster result builds its items in place; the bytes are those of items moved in."""
    items = [
        RosterItem(
            "romeo@localhost", name="Romeo & <Juliet>", subscription="to", groups=("Friends", "Grüße")
        ),
        RosterItem("nurse@localhost", subscription="from", approved=True),
        RosterItem("mercutio@localhost", subscription="none", ask=True),
    ]
    alone, built = element(ns.ROSTER, "query", ver="7"), element(ns.ROSTER, "query", ver="7")
    for item in items:
        alone.append(item_element(item, item.jid))
        assert item_element(item, item.jid, built) is built[-1]
    assert serialize(built) == serialize(alone)
    assert serialize(built).count(b"xmlns") == 1
