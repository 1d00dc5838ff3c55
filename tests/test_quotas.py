"""Per-account quotas as transcripts (issue 11 item 5): roster items, PEP nodes and items, private XML
elements. The user's own request past a quota gets <policy-violation/> (RFC 6120 §8.3.3.12); a contact's
subscription request that the user's full roster cannot keep gets <resource-constraint/> (§8.3.3.18)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Literal

import pytest
import slixmpp
from conftest import Clients, make_config, wait_for
from slixmpp.exceptions import IqError
from slixmpp.stanza import Error as StanzaErrorPlugin

from nitro.config import Config
from nitro.server import Server
from nitro.storage.models import RosterItem

ROSTER = "jabber:iq:roster"
PRIVATE = "jabber:iq:private"
PUBSUB = "http://jabber.org/protocol/pubsub"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(
        tmp_path,
        roster={"max_items": 3},
        pep={"max_nodes": 2, "max_items_per_account": 3},
        private={"max_namespaces": 2},
    )


@pytest.fixture(autouse=True)
def policy_violation_known(monkeypatch: pytest.MonkeyPatch) -> None:
    """slixmpp knows the RFC 3920 conditions only; teach it RFC 6120's policy-violation (as test_mam does)."""
    monkeypatch.setattr(StanzaErrorPlugin, "conditions", StanzaErrorPlugin.conditions | {"policy-violation"})


async def request(client: slixmpp.ClientXMPP, kind: Literal["get", "set"], payload: str) -> Any:
    iq = client.make_iq(itype=kind)
    iq.append(ET.fromstring(payload))  # noqa: S314  # the test's own literal
    return await iq.send(timeout=5)


def condition(stanza: Any) -> tuple[str | None, str | None]:
    """(error type, defined condition) as the XML carries them."""
    error = stanza.xml.find("{jabber:client}error")
    assert error is not None, stanza
    names = [child.tag.partition("}")[2] for child in error if child.tag.startswith(f"{{{STANZAS}}}")]
    return error.get("type"), next(name for name in names if name != "text")


async def refused(
    client: slixmpp.ClientXMPP, kind: Literal["get", "set"], payload: str
) -> tuple[str | None, str | None]:
    with pytest.raises(IqError) as failure:
        await request(client, kind, payload)
    return condition(failure.value.iq)


def roster_set(jid: str, name: str = "") -> str:
    return f"<query xmlns='{ROSTER}'><item jid='{jid}' name='{name}'/></query>"


# -- roster items ----------------------------------------------------------------------------------------


async def test_a_roster_set_past_the_limit_is_a_policy_violation(server: Server, clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"), send_presence=False)
    for n in range(3):
        await request(alice, "set", roster_set(f"friend{n}@localhost"))

    assert await refused(alice, "set", roster_set("friend3@localhost")) == ("modify", "policy-violation")
    assert len((await server.storage.rosters.get("alice")).items) == 3
    await request(alice, "set", roster_set("friend0@localhost", "Renamed"))  # an update adds nothing
    await request(
        alice, "set", f"<query xmlns='{ROSTER}'><item jid='friend1@localhost' subscription='remove'/></query>"
    )
    await request(alice, "set", roster_set("friend3@localhost"))  # room again
    assert {item.jid for item in (await server.storage.rosters.get("alice")).items} == {
        "friend0@localhost",
        "friend2@localhost",
        "friend3@localhost",
    }


async def test_subscribing_with_a_full_roster_is_a_policy_violation(server: Server, clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    for n in range(3):
        await server.storage.rosters.put("alice", RosterItem(f"friend{n}@localhost"))
    alice = await clients.login(alice_jid)
    errors: list[Any] = []
    alice.add_event_handler("presence_error", errors.append)
    bob = await clients.login(bob_jid)
    asked: list[Any] = []
    bob.add_event_handler("presence_subscribe", asked.append)

    alice.send_presence(pto=bob_jid, ptype="subscribe")  # would add bob to alice's roster

    await wait_for(lambda: bool(errors))
    assert condition(errors[0]) == ("modify", "policy-violation")
    assert await server.storage.rosters.get_item("alice", bob_jid) is None
    await asyncio.sleep(0.2)
    assert asked == []  # nothing reached bob


async def test_a_request_to_a_full_roster_is_a_resource_constraint(server: Server, clients: Clients) -> None:
    """The stranger's request cannot be kept for alice: the stranger is told, alice's roster is unchanged."""
    alice_jid, eve_jid = await clients.user("alice"), await clients.user("eve")
    for n in range(3):
        await server.storage.rosters.put("alice", RosterItem(f"friend{n}@localhost"))
    eve = await clients.login(eve_jid)
    errors: list[Any] = []
    eve.add_event_handler("presence_error", errors.append)

    eve.send_presence(pto=alice_jid, ptype="subscribe")

    await wait_for(lambda: bool(errors))
    assert condition(errors[0]) == ("wait", "resource-constraint")
    assert str(errors[0]["from"]) == alice_jid
    assert await server.storage.rosters.get_item("alice", eve_jid) is None


# -- PEP nodes and items ---------------------------------------------------------------------------------


def publish(node: str, item_id: str, text: str = "x") -> str:
    return (
        f"<pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='{item_id}'>"
        f"<entry xmlns='urn:example:quota'>{text}</entry></item></publish></pubsub>"
    )


async def test_pep_nodes_past_the_limit_are_a_policy_violation(server: Server, clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"))
    await request(alice, "set", f"<pubsub xmlns='{PUBSUB}'><create node='urn:example:one'/></pubsub>")
    await request(alice, "set", publish("urn:example:two", "a"))  # auto-created (XEP-0163 §3)

    third = f"<pubsub xmlns='{PUBSUB}'><create node='urn:example:three'/></pubsub>"
    assert await refused(alice, "set", third) == ("modify", "policy-violation")
    assert await refused(alice, "set", publish("urn:example:four", "a")) == ("modify", "policy-violation")
    assert len(await server.storage.pep.list_nodes("alice")) == 2


async def test_pep_items_past_the_account_limit_are_a_policy_violation(
    server: Server, clients: Clients
) -> None:
    alice = await clients.login(await clients.user("alice"))
    form = (
        "<configure><x xmlns='jabber:x:data' type='submit'>"
        f"<field var='FORM_TYPE'><value>{PUBSUB}#publish-options</value></field>"
        "<field var='pubsub#max_items'><value>10</value></field></x></configure>"
    )
    many = publish("urn:example:many", "a").replace(
        "</pubsub>", form.replace("configure", "publish-options") + "</pubsub>"
    )
    await request(alice, "set", many)
    await request(alice, "set", publish("urn:example:many", "b"))
    await request(alice, "set", publish("urn:example:many", "c"))

    assert await refused(alice, "set", publish("urn:example:many", "d")) == ("modify", "policy-violation")
    items = await server.storage.pep.items("alice", "urn:example:many")
    assert [item.id for item in items] == ["c", "b", "a"]
    await request(alice, "set", publish("urn:example:many", "b", "new"))  # replacing adds nothing
    retract = f"<pubsub xmlns='{PUBSUB}'><retract node='urn:example:many'><item id='a'/></retract></pubsub>"
    await request(alice, "set", retract)
    await request(alice, "set", publish("urn:example:many", "d"))  # room again


# -- private XML -----------------------------------------------------------------------------------------


async def test_private_elements_past_the_limit_are_a_policy_violation(
    server: Server, clients: Clients
) -> None:
    alice = await clients.login(await clients.user("alice"))

    def private(namespace: str, text: str = "") -> str:
        return f"<query xmlns='{PRIVATE}'><prefs xmlns='{namespace}'>{text}</prefs></query>"

    await request(alice, "set", private("urn:example:a"))
    await request(alice, "set", private("urn:example:b"))
    assert await refused(alice, "set", private("urn:example:c")) == ("modify", "policy-violation")
    assert await server.storage.private.get("alice", "{urn:example:c}prefs") is None
    await request(alice, "set", private("urn:example:a", "replaced"))  # replacing adds nothing
    stored = await server.storage.private.get("alice", "{urn:example:a}prefs")
    assert stored is not None
    assert b"replaced" in stored
