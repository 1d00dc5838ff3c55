"""PEP (XEP-0163) on PubSub (XEP-0060), as transcripts between real slixmpp clients: avatars (XEP-0084),
bookmarks (XEP-0402), OMEMO device lists (XEP-0384), and every refused request with its error."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest
import slixmpp
from conftest import DOMAIN, Clients, wait_for
from lxml import etree
from slixmpp.exceptions import IqError

from nitro.modules.pep_interests import interests
from nitro.server import Server
from nitro.storage.models import RosterItem
from nitro.xmpp.jid import JID
from nitro.xmpp.pubsub import verification_string

PUBSUB = "http://jabber.org/protocol/pubsub"
EVENT = f"{PUBSUB}#event"
OWNER = f"{PUBSUB}#owner"
ERRORS = f"{PUBSUB}#errors"
METADATA = "urn:xmpp:avatar:metadata"
DATA = "urn:xmpp:avatar:data"
BOOKMARKS = "urn:xmpp:bookmarks:1"
DEVICES = "urn:xmpp:omemo:2:devices"
PEP_PLUGINS = ("xep_0004", "xep_0060", "xep_0115", "xep_0163", "xep_0084")
AVATAR = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


async def befriend(server: Server, a: str, b: str) -> None:
    """Mutual presence subscription, as storage holds it after a completed exchange."""
    await server.storage.rosters.put(a.split("@")[0], RosterItem(b, subscription="both"))
    await server.storage.rosters.put(b.split("@")[0], RosterItem(a, subscription="both"))


def session_of(server: Server, client: slixmpp.ClientXMPP) -> Any:
    return server.sessions.get(JID.parse(str(client.boundjid)))


async def login(
    clients: Clients, jid: str, *notify: str, send_presence: bool = True, resource: str = ""
) -> slixmpp.ClientXMPP:
    """Log in a PEP-aware client whose caps ask for `<node>+notify` of each of `notify` (XEP-0163 §4.2).

    The server has learnt the interests (from the caps hash, or by asking disco#info) when this returns.
    """
    client = await clients.login(
        f"{jid}/{resource}" if resource else jid, plugins=PEP_PLUGINS, send_presence=False
    )
    for node in notify:
        client.plugin["xep_0030"].add_feature(f"{node}+notify")
    await client.plugin["xep_0115"].update_caps(broadcast=False)
    if send_presence:
        client.send_presence()
        wanted = {*notify, METADATA}  # xep_0084 registers its own +notify for avatar metadata
        await wait_for(lambda: wanted <= interests(session_of(clients.server, client)).nodes)
    return client


async def request(
    client: slixmpp.ClientXMPP, kind: Literal["get", "set"], payload: str, to: str | None = None
) -> Any:
    """Send an IQ with a literal payload; the result, or IqError."""
    iq = client.make_iq(ito=to, itype=kind)
    iq.append(ET.fromstring(payload))  # noqa: S314  # the test's own literal
    return await iq.send(timeout=5)


async def refused(
    client: slixmpp.ClientXMPP, kind: Literal["get", "set"], payload: str, to: str | None = None
) -> tuple[str, str | None]:
    """The error condition and pubsub#errors condition of a request that must fail."""
    with pytest.raises(IqError) as failure:
        await request(client, kind, payload, to)
    error = failure.value.iq["error"]
    app = [child.tag.split("}")[1] for child in error.xml if child.tag.startswith(f"{{{ERRORS}}}")]
    return str(error["condition"]), app[0] if app else None


def publish_xml(
    node: str, payload: str, item_id: str | None = None, options: dict[str, str] | None = None
) -> str:
    item = f"<item id='{item_id}'>{payload}</item>" if item_id else f"<item>{payload}</item>"
    form = ""
    if options is not None:
        fields = "".join(
            f"<field var='{var}'><value>{value}</value></field>" for var, value in options.items()
        )
        form = (
            "<publish-options><x xmlns='jabber:x:data' type='submit'>"
            f"<field var='FORM_TYPE' type='hidden'><value>{PUBSUB}#publish-options</value></field>{fields}"
            "</x></publish-options>"
        )
    return f"<pubsub xmlns='{PUBSUB}'><publish node='{node}'>{item}</publish>{form}</pubsub>"


def items_xml(node: str, *ids: str, max_items: int | None = None) -> str:
    limit = f" max_items='{max_items}'" if max_items is not None else ""
    items = "".join(f"<item id='{item_id}'/>" for item_id in ids)
    return f"<pubsub xmlns='{PUBSUB}'><items node='{node}'{limit}>{items}</items></pubsub>"


async def access_model(server: Server, owner: str, node: str) -> str | None:
    """The stored node's access model; None if there is no such node."""
    found = await server.storage.pep.get_node(owner, node)
    return None if found is None else found.access_model


def item_ids(result: Any) -> list[str]:
    return [item.get("id") for item in result.xml.iter(f"{{{PUBSUB}}}item")]


class Events:
    """Every PEP notification one client receives (captured as it arrives, so none is missed)."""

    def __init__(self, client: slixmpp.ClientXMPP) -> None:
        self.messages: list[etree._Element] = []

        def capture(stanza: Any) -> Any:
            if stanza.xml.find(f"{{{EVENT}}}event") is not None:
                self.messages.append(etree.fromstring(ET.tostring(stanza.xml)))
            return stanza

        client.add_filter("in", capture)

    def of(self, node: str, kind: str = "item") -> list[etree._Element]:
        """The <item/>s or <retract/>s notified for `node`, or its <delete/>."""
        path = f"{{{EVENT}}}event/{{{EVENT}}}items[@node='{node}']/{{{EVENT}}}{kind}"
        if kind == "delete":
            path = f"{{{EVENT}}}event/{{{EVENT}}}delete[@node='{node}']"
        return [found for message in self.messages for found in message.iterfind(path)]

    async def notified(self, node: str, kind: str = "item", count: int = 1) -> list[etree._Element]:
        await wait_for(lambda: len(self.of(node, kind)) >= count)
        return self.of(node, kind)


@pytest.fixture(autouse=True)
async def settled(server: Server) -> AsyncIterator[None]:
    """After the clients left, let PEP's background work finish before the server stops."""
    yield
    pending = [task for task in server._tasks if "PepService" in getattr(task.get_coro(), "__qualname__", "")]
    if pending:
        await asyncio.wait(pending, timeout=2)


async def test_alice_publishes_an_avatar_and_her_subscribed_contact_is_notified_and_fetches_it(
    clients: Clients, server: Server
) -> None:
    alice, bob = await clients.user("alice"), await clients.user("bob")
    await befriend(server, alice, bob)
    bob_client = await login(clients, bob)
    bob_events = Events(bob_client)
    alice_client = await login(clients, alice)
    alice_events = Events(alice_client)

    # alice publishes the data, then the metadata pointing at it (XEP-0084 §4.1, §4.2)
    avatar_id = hashlib.sha1(AVATAR, usedforsecurity=False).hexdigest()  # XEP-0084 §4.1: the id
    await alice_client.plugin["xep_0084"].publish_avatar(AVATAR, timeout=5)
    await alice_client.plugin["xep_0084"].publish_avatar_metadata(
        {"id": avatar_id, "type": "image/png", "bytes": len(AVATAR)}, timeout=5
    )

    # bob is notified of the metadata, from alice's bare JID, as a headline (XEP-0163 §4.3.1)
    [item] = await bob_events.notified(METADATA)
    message = bob_events.messages[0]
    assert message.get("from") == alice
    assert message.get("type") == "headline"
    assert item.get("id") == avatar_id
    info = item.find(f"{{{METADATA}}}metadata/{{{METADATA}}}info")
    assert info is not None
    assert info.get("bytes") == str(len(AVATAR))
    # alice's own resource hears of it too (XEP-0163 §4), and nobody was sent the data node (no +notify)
    await alice_events.notified(METADATA)
    assert bob_events.of(DATA) == []

    # bob fetches the data item the metadata names
    result = await bob_client.plugin["xep_0084"].retrieve_avatar(slixmpp.JID(alice), avatar_id, timeout=5)
    assert result["pubsub"]["items"]["item"]["avatar_data"]["value"] == AVATAR


async def test_a_stranger_may_not_read_presence_nodes(clients: Clients, server: Server) -> None:
    alice, mallory = await clients.user("alice"), await clients.user("mallory")
    alice_client = await login(clients, alice)
    await request(alice_client, "set", publish_xml(METADATA, f"<metadata xmlns='{METADATA}'/>", "a1"))
    mallory_client = await clients.login(mallory)

    # XEP-0060 §6.5.9: presence access model, no presence subscription
    assert await refused(mallory_client, "get", items_xml(METADATA), to=alice) == (
        "not-authorized",
        "presence-subscription-required",
    )
    # nor does the disco#items of the account show anything to someone who may not see it
    with pytest.raises(IqError):
        await mallory_client.plugin["xep_0030"].get_items(jid=slixmpp.JID(alice), local=False, timeout=5)


async def test_a_contact_without_interest_in_a_node_is_not_notified(clients: Clients, server: Server) -> None:
    alice, bob, carol = await clients.user("alice"), await clients.user("bob"), await clients.user("carol")
    await befriend(server, alice, bob)
    await befriend(server, alice, carol)
    bob_client = await login(clients, bob, "http://jabber.org/protocol/tune")
    carol_client = await login(clients, carol)
    bob_events, carol_events = Events(bob_client), Events(carol_client)
    alice_client = await login(clients, alice)

    tune = "<tune xmlns='http://jabber.org/protocol/tune'><title>Allegro</title></tune>"
    await request(alice_client, "set", publish_xml("http://jabber.org/protocol/tune", tune))

    await bob_events.notified("http://jabber.org/protocol/tune")
    await asyncio.sleep(0.2)
    assert carol_events.messages == []  # XEP-0163 §4.2: filtered notifications


async def test_bookmarks_with_whitelist_reach_alices_other_resource_but_not_bob(
    clients: Clients, server: Server
) -> None:
    alice, bob = await clients.user("alice"), await clients.user("bob")
    await befriend(server, alice, bob)
    bob_client = await login(clients, bob, BOOKMARKS)
    bob_events = Events(bob_client)
    phone = await login(clients, alice, BOOKMARKS, resource="phone")
    phone_events = Events(phone)
    desktop = await login(clients, alice, BOOKMARKS, resource="desktop")

    # XEP-0402 §3: one item per room, whitelist access, as many items as the server allows
    options = {
        "pubsub#persist_items": "true",
        "pubsub#max_items": "max",
        "pubsub#send_last_published_item": "never",
        "pubsub#access_model": "whitelist",
    }
    for room in ("lobby@rooms.localhost", "trading@rooms.localhost"):
        conference = (
            f"<conference xmlns='{BOOKMARKS}' name='{room}' autojoin='true'><nick>al</nick></conference>"
        )
        await request(desktop, "set", publish_xml(BOOKMARKS, conference, room, options))

    assert len(await phone_events.notified(BOOKMARKS, count=2)) == 2
    result = await request(phone, "get", items_xml(BOOKMARKS))
    assert sorted(item_ids(result)) == ["lobby@rooms.localhost", "trading@rooms.localhost"]

    # bob is a contact, but not on the whitelist: no notification, and no reading (XEP-0060 §6.5.9)
    assert await refused(bob_client, "get", items_xml(BOOKMARKS), to=alice) == ("not-allowed", "closed-node")
    await asyncio.sleep(0.2)
    assert bob_events.of(BOOKMARKS) == []
    # the same publish-options again are a met precondition (max resolves to the same limit)
    conference = f"<conference xmlns='{BOOKMARKS}' name='x'/>"
    await request(desktop, "set", publish_xml(BOOKMARKS, conference, "lobby@rooms.localhost", options))


async def test_the_owner_puts_bob_on_the_whitelist_with_a_member_affiliation(
    clients: Clients, server: Server
) -> None:
    alice, bob = await clients.user("alice"), await clients.user("bob")
    alice_client = await login(clients, alice)
    bob_client = await clients.login(bob)
    secret = "<plan xmlns='urn:example:plan'>buy</plan>"
    await request(
        alice_client,
        "set",
        publish_xml("urn:example:plan", secret, "p", {"pubsub#access_model": "whitelist"}),
    )
    assert (await refused(bob_client, "get", items_xml("urn:example:plan"), to=alice))[0] == "not-allowed"

    # XEP-0060 §8.9.2: member puts bob on the whitelist; §8.9.1 lists it
    await request(
        alice_client,
        "set",
        f"<pubsub xmlns='{OWNER}'><affiliations node='urn:example:plan'>"
        f"<affiliation jid='{bob}' affiliation='member'/></affiliations></pubsub>",
    )
    listing = await request(
        alice_client, "get", f"<pubsub xmlns='{OWNER}'><affiliations node='urn:example:plan'/></pubsub>"
    )
    affiliations = {a.get("jid"): a.get("affiliation") for a in listing.xml.iter(f"{{{OWNER}}}affiliation")}
    assert affiliations == {alice: "owner", bob: "member"}
    assert item_ids(await request(bob_client, "get", items_xml("urn:example:plan"), to=alice)) == ["p"]

    # and 'none' takes him off again
    await request(
        alice_client,
        "set",
        f"<pubsub xmlns='{OWNER}'><affiliations node='urn:example:plan'>"
        f"<affiliation jid='{bob}' affiliation='none'/></affiliations></pubsub>",
    )
    assert (await refused(bob_client, "get", items_xml("urn:example:plan"), to=alice))[0] == "not-allowed"


async def test_omemo_device_list_with_open_access_is_readable_by_anyone(
    clients: Clients, server: Server
) -> None:
    alice, mallory = await clients.user("alice"), await clients.user("mallory")
    alice_client = await login(clients, alice)
    devices = f"<devices xmlns='{DEVICES}'><device id='12345'/></devices>"
    await request(
        alice_client, "set", publish_xml(DEVICES, devices, "current", {"pubsub#access_model": "open"})
    )

    stranger = await clients.login(mallory)
    result = await request(stranger, "get", items_xml(DEVICES), to=alice)
    assert item_ids(result) == ["current"]
    assert result.xml.find(f".//{{{DEVICES}}}device").get("id") == "12345"


async def test_publish_options_that_the_node_does_not_match_are_a_conflict(
    clients: Clients, server: Server
) -> None:
    alice = await clients.user("alice")
    client = await login(clients, alice)
    devices = f"<devices xmlns='{DEVICES}'/>"
    await request(client, "set", publish_xml(DEVICES, devices, "current"))  # auto-created: presence

    # XEP-0060 §7.1.5: the precondition fails, nothing is published
    assert await refused(
        client,
        "set",
        publish_xml(
            DEVICES,
            f"<devices xmlns='{DEVICES}'><device id='1'/></devices>",
            "current",
            {"pubsub#access_model": "open"},
        ),
    ) == ("conflict", "precondition-not-met")
    stored = await server.storage.pep.items("alice", DEVICES)
    assert [item.payload for item in stored] == [devices.replace("'", '"').encode()]
    # an option the service cannot honour is an unmet precondition too
    assert await refused(client, "set", publish_xml(DEVICES, devices, "x", {"pubsub#title": "mine"})) == (
        "conflict",
        "precondition-not-met",
    )

    # the client reconfigures the node (§8.2.4) and publishes again, as Conversations does
    config = await request(client, "get", f"<pubsub xmlns='{OWNER}'><configure node='{DEVICES}'/></pubsub>")
    values = {
        f.get("var"): f.findtext("{jabber:x:data}value") for f in config.xml.iter("{jabber:x:data}field")
    }
    assert values["pubsub#access_model"] == "presence"
    assert values["pubsub#max_items"] == "1"
    await request(
        client,
        "set",
        f"<pubsub xmlns='{OWNER}'><configure node='{DEVICES}'><x xmlns='jabber:x:data' type='submit'>"
        f"<field var='FORM_TYPE' type='hidden'><value>{PUBSUB}#node_config</value></field>"
        "<field var='pubsub#access_model'><value>open</value></field></x></configure></pubsub>",
    )
    await request(client, "set", publish_xml(DEVICES, devices, "current", {"pubsub#access_model": "open"}))
    assert await access_model(server, "alice", DEVICES) == "open"


async def test_a_payload_over_the_limit_is_refused_and_nothing_is_stored(
    clients: Clients, server: Server
) -> None:
    alice = await clients.user("alice")
    client = await login(clients, alice)
    big = "A" * (server.config.pep.max_item_bytes + 1)  # still under the stream's stanza limit

    assert await refused(client, "set", publish_xml(DATA, f"<data xmlns='{DATA}'>{big}</data>", "big")) == (
        "not-acceptable",
        "payload-too-big",
    )
    assert await server.storage.pep.get_node("alice", DATA) is None


async def test_publishing_to_another_users_node_is_forbidden(clients: Clients, server: Server) -> None:
    alice, bob = await clients.user("alice"), await clients.user("bob")
    await befriend(server, alice, bob)
    bob_client = await login(clients, bob)

    tune = "<tune xmlns='http://jabber.org/protocol/tune'/>"
    assert await refused(
        bob_client, "set", publish_xml("http://jabber.org/protocol/tune", tune), to=alice
    ) == (
        "forbidden",
        None,
    )  # XEP-0060 §7.1.3.1
    assert await refused(
        bob_client, "set", f"<pubsub xmlns='{OWNER}'><delete node='x'/></pubsub>", to=alice
    ) == ("forbidden", None)
    assert await server.storage.pep.list_nodes("alice") == []


@pytest.mark.parametrize(
    ("payload", "condition", "app"),
    [
        (
            f"<pubsub xmlns='{PUBSUB}'><publish><item><x xmlns='urn:x'/></item></publish></pubsub>",
            "bad-request",
            "nodeid-required",
        ),
        (f"<pubsub xmlns='{PUBSUB}'><publish node='n'/></pubsub>", "bad-request", "item-required"),
        (
            f"<pubsub xmlns='{PUBSUB}'><publish node='n'><item/></publish></pubsub>",
            "bad-request",
            "payload-required",
        ),
        (
            publish_xml("n", "<a xmlns='urn:a'/><b xmlns='urn:b'/>"),
            "bad-request",
            "invalid-payload",
        ),
        (publish_xml("n", "<x xmlns='urn:x'/>", None, {"pubsub#max_items": "lots"}), "bad-request", None),
        (
            publish_xml("n", "<x xmlns='urn:x'/>", None, {"pubsub#access_model": "telepathy"}),
            "bad-request",
            None,
        ),
        (
            publish_xml("n", "<x xmlns='urn:x'/>", None, {"pubsub#access_model": "roster"}),
            "conflict",
            "precondition-not-met",
        ),
        (
            f"<pubsub xmlns='{PUBSUB}'><retract node='n'><item id='gone'/></retract></pubsub>",
            "item-not-found",
            None,
        ),
        (f"<pubsub xmlns='{PUBSUB}'><retract node='n'/></pubsub>", "bad-request", "item-required"),
        (f"<pubsub xmlns='{PUBSUB}'><create/></pubsub>", "not-acceptable", "nodeid-required"),
        (
            f"<pubsub xmlns='{PUBSUB}'><subscribe node='n' jid='alice@localhost'/></pubsub>",
            "feature-not-implemented",
            "unsupported",
        ),
        (f"<pubsub xmlns='{PUBSUB}'/>", "bad-request", None),
        (f"<pubsub xmlns='{OWNER}'><purge node='n'/></pubsub>", "feature-not-implemented", "unsupported"),
        (f"<pubsub xmlns='{OWNER}'><configure node='n'/></pubsub>", "bad-request", None),
        (f"<pubsub xmlns='{OWNER}'><delete node='nothing-here'/></pubsub>", "item-not-found", None),
    ],
)
async def test_malformed_set_requests_get_the_xep_0060_error(
    clients: Clients, server: Server, payload: str, condition: str, app: str | None
) -> None:
    client = await clients.login(await clients.user("alice"))
    assert await refused(client, "set", payload) == (condition, app)
    assert await server.storage.pep.list_nodes("alice") == []


@pytest.mark.parametrize(
    ("payload", "condition"),
    [
        (items_xml("never-created"), "item-not-found"),
        (items_xml("n", max_items=0), "bad-request"),
        (f"<pubsub xmlns='{PUBSUB}'><items/></pubsub>", "bad-request"),
        (f"<pubsub xmlns='{OWNER}'><configure node='never-created'/></pubsub>", "item-not-found"),
    ],
)
async def test_malformed_get_requests_get_the_xep_0060_error(
    clients: Clients, payload: str, condition: str
) -> None:
    client = await clients.login(await clients.user("alice"))
    assert (await refused(client, "get", payload))[0] == condition


async def test_retract_with_notify_tells_the_interested_contacts(clients: Clients, server: Server) -> None:
    alice, bob = await clients.user("alice"), await clients.user("bob")
    await befriend(server, alice, bob)
    bob_client = await login(clients, bob, "urn:example:notes")
    bob_events = Events(bob_client)
    alice_client = await login(clients, alice)
    for note in ("n1", "n2"):
        await request(
            alice_client,
            "set",
            publish_xml(
                "urn:example:notes",
                f"<note xmlns='urn:example:notes'>{note}</note>",
                note,
                {"pubsub#max_items": "10"},
            ),
        )
    await bob_events.notified("urn:example:notes", count=2)

    await request(
        alice_client,
        "set",
        f"<pubsub xmlns='{PUBSUB}'><retract node='urn:example:notes' notify='true'>"
        "<item id='n1'/></retract></pubsub>",
    )

    [retracted] = await bob_events.notified("urn:example:notes", "retract")
    assert retracted.get("id") == "n1"  # XEP-0060 §7.2.2.1
    result = await request(bob_client, "get", items_xml("urn:example:notes"), to=alice)
    assert item_ids(result) == ["n2"]
    # asking for items by id returns those that exist (§6.5.8)
    assert item_ids(
        await request(bob_client, "get", items_xml("urn:example:notes", "n1", "n2"), to=alice)
    ) == ["n2"]


async def test_a_subscribed_contact_logging_in_gets_the_last_published_item(
    clients: Clients, server: Server
) -> None:
    alice, bob = await clients.user("alice"), await clients.user("bob")
    await befriend(server, alice, bob)
    alice_client = await login(clients, alice)
    for version in ("v1", "v2"):
        metadata = (
            f"<metadata xmlns='{METADATA}'><info id='{version}' bytes='1' type='image/png'/></metadata>"
        )
        await request(alice_client, "set", publish_xml(METADATA, metadata, version))

    # bob comes online: his initial presence with +notify caps brings the last item (XEP-0163 §4.3.4)
    bob_client = await login(clients, bob, send_presence=False)
    bob_events = Events(bob_client)
    bob_client.send_presence()
    [item] = await bob_events.notified(METADATA)
    assert item.get("id") == "v2"
    message = bob_events.messages[0]
    assert message.get("from") == alice
    assert message.find("{urn:xmpp:delay}delay") is not None  # with the time it was published


async def test_approving_a_subscription_sends_the_last_published_item(
    clients: Clients, server: Server
) -> None:
    alice, bob = await clients.user("alice"), await clients.user("bob")
    alice_client = await login(clients, alice)  # slixmpp approves subscription requests by default
    metadata = f"<metadata xmlns='{METADATA}'><info id='av' bytes='1' type='image/png'/></metadata>"
    await request(alice_client, "set", publish_xml(METADATA, metadata, "av"))
    bob_client = await login(clients, bob)
    bob_events = Events(bob_client)
    assert bob_events.of(METADATA) == []  # not subscribed yet: nothing on login

    bob_client.send_presence(pto=alice, ptype="subscribe")

    [item] = await bob_events.notified(METADATA)  # XEP-0060 §6.1.7 (on_sub)
    assert item.get("id") == "av"


async def test_deleting_a_node_notifies_and_removes_its_items(clients: Clients, server: Server) -> None:
    alice, bob = await clients.user("alice"), await clients.user("bob")
    await befriend(server, alice, bob)
    bob_client = await login(clients, bob, "urn:example:status")
    bob_events = Events(bob_client)
    alice_client = await login(clients, alice)
    await request(
        alice_client, "set", publish_xml("urn:example:status", "<s xmlns='urn:example:status'/>", "s")
    )

    await request(
        alice_client, "set", f"<pubsub xmlns='{OWNER}'><delete node='urn:example:status'/></pubsub>"
    )

    await bob_events.notified("urn:example:status", "delete")  # XEP-0060 §8.4.2
    assert (await refused(bob_client, "get", items_xml("urn:example:status"), to=alice))[
        0
    ] == "item-not-found"


async def test_the_account_shows_pep_in_disco_and_lists_the_nodes_a_contact_may_read(
    clients: Clients, server: Server
) -> None:
    alice, bob = await clients.user("alice"), await clients.user("bob")
    await befriend(server, alice, bob)
    alice_client = await login(clients, alice)
    await request(alice_client, "set", publish_xml(METADATA, f"<metadata xmlns='{METADATA}'/>", "m"))
    bookmark = f"<conference xmlns='{BOOKMARKS}' name='r'/>"
    await request(
        alice_client, "set", publish_xml(BOOKMARKS, bookmark, "r", {"pubsub#access_model": "whitelist"})
    )
    bob_client = await clients.login(bob)

    # XEP-0163 §6.1: the account owner learns PEP is there
    info = await alice_client.plugin["xep_0030"].get_info(jid=slixmpp.JID(alice), local=False, timeout=5)
    identities = {(category, type_) for category, type_, _lang, _name in info["disco_info"]["identities"]}
    assert ("pubsub", "pep") in identities
    assert {f"{PUBSUB}#publish", f"{PUBSUB}#publish-options", f"{PUBSUB}#access-whitelist"} <= set(
        info["disco_info"]["features"]
    )

    # XEP-0060 §5.2: bob sees the nodes he may read, alice all of hers
    listed = await bob_client.plugin["xep_0030"].get_items(jid=slixmpp.JID(alice), local=False, timeout=5)
    assert [node for _jid, node, _name in listed["disco_items"]["items"]] == [METADATA]
    own = await alice_client.plugin["xep_0030"].get_items(jid=slixmpp.JID(alice), local=False, timeout=5)
    assert sorted(node for _jid, node, _name in own["disco_items"]["items"]) == [METADATA, BOOKMARKS]


async def test_create_and_configure_then_create_again_is_a_conflict(clients: Clients, server: Server) -> None:
    client = await clients.login(await clients.user("alice"))
    configure = (
        "<configure><x xmlns='jabber:x:data' type='submit'>"
        f"<field var='FORM_TYPE' type='hidden'><value>{PUBSUB}#node_config</value></field>"
        "<field var='pubsub#access_model'><value>open</value></field>"
        "<field var='pubsub#max_items'><value>100000</value></field></x></configure>"
    )
    await request(
        client, "set", f"<pubsub xmlns='{PUBSUB}'><create node='urn:example:feed'/>{configure}</pubsub>"
    )

    node = await server.storage.pep.get_node("alice", "urn:example:feed")
    assert node is not None
    assert node.access_model == "open"
    assert node.max_items == server.config.pep.max_items_per_node  # capped (XEP-0060 §16.4.3 allows a limit)
    assert (
        await refused(client, "set", f"<pubsub xmlns='{PUBSUB}'><create node='urn:example:feed'/></pubsub>")
    )[0] == "conflict"


async def caps_claiming(client: slixmpp.ClientXMPP, ver: str, notify: str) -> None:
    """Make `client` announce `notify` under a made-up verification string, and answer for it."""
    client.plugin["xep_0030"].add_feature(f"{notify}+notify")
    caps_node = client.plugin["xep_0115"].caps_node
    info = await client.plugin["xep_0030"].get_info(local=True)
    await client.plugin["xep_0030"].set_info(node=f"{caps_node}#{ver}", info=info)
    client.send_raw(
        f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{caps_node}' ver='{ver}'/>"
        "</presence>"
    )


async def test_caps_whose_hash_does_not_verify_serve_only_the_session_that_sent_them(
    clients: Clients, server: Server
) -> None:
    alice = await clients.user("alice")
    bogus = "bm90IHRoZSBoYXNoIG9mIGFueXRoaW5nIQ=="  # hashes nothing this client answers (XEP-0115 §5.4)
    first = await clients.login(f"{alice}/one", plugins=PEP_PLUGINS, send_presence=False)
    await caps_claiming(first, bogus, "urn:example:mood")
    await wait_for(lambda: "urn:example:mood" in interests(session_of(server, first)).nodes)

    # the same ver from another session is asked again, not taken from a cache (a poisoning attempt)
    second = await clients.login(f"{alice}/two", plugins=PEP_PLUGINS, send_presence=False)
    await caps_claiming(second, bogus, "urn:example:tune")
    await wait_for(lambda: "urn:example:tune" in interests(session_of(server, second)).nodes)
    assert "urn:example:mood" not in interests(session_of(server, second)).nodes


def test_verification_string_of_the_xep_0115_complex_example() -> None:
    """XEP-0115 §5.3: identities in two languages, features and an extended form."""
    query = etree.fromstring(
        """<query xmlns='http://jabber.org/protocol/disco#info' node='http://psi-im.org#q07IKJEyjvHSyhy//CH0CxmKi8w='>
          <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>
          <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>
          <feature var='http://jabber.org/protocol/caps'/>
          <feature var='http://jabber.org/protocol/disco#info'/>
          <feature var='http://jabber.org/protocol/disco#items'/>
          <feature var='http://jabber.org/protocol/muc'/>
          <x xmlns='jabber:x:data' type='result'>
            <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>
            <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>
            <field var='os'><value>Mac</value></field>
            <field var='os_version'><value>10.5.1</value></field>
            <field var='software'><value>Psi</value></field>
            <field var='software_version'><value>0.11</value></field>
          </x>
        </query>"""
    )
    assert verification_string(query, "sha-1") == "q07IKJEyjvHSyhy//CH0CxmKi8w="
    assert verification_string(query, "md5") is None  # not a hash we accept
    duplicate = etree.fromstring(
        "<query xmlns='http://jabber.org/protocol/disco#info'><feature var='a'/><feature var='a'/></query>"
    )
    assert verification_string(duplicate, "sha-1") is None  # §5.4 step 3.4


async def test_the_server_domain_itself_is_no_pubsub_service(clients: Clients) -> None:
    """The PEP service lives on accounts; the server itself has no pubsub (RFC 6120 §8.4)."""
    client = await clients.login(await clients.user("alice"))
    assert (await refused(client, "get", items_xml(METADATA), to=DOMAIN))[0] == "service-unavailable"


async def test_a_stranger_who_sends_directed_presence_hears_about_open_nodes_only(
    clients: Clients, server: Server
) -> None:
    alice, mallory = await clients.user("alice"), await clients.user("mallory")
    alice_client = await login(clients, alice)
    devices = f"<devices xmlns='{DEVICES}'><device id='1'/></devices>"
    await request(
        alice_client, "set", publish_xml(DEVICES, devices, "current", {"pubsub#access_model": "open"})
    )
    metadata = f"<metadata xmlns='{METADATA}'><info id='av' bytes='1' type='image/png'/></metadata>"
    await request(alice_client, "set", publish_xml(METADATA, metadata, "av"))  # presence access
    stranger = await login(clients, mallory, DEVICES)
    events = Events(stranger)

    # XEP-0163 §4: directed presence (with caps) makes alice's service aware of mallory
    stranger.send_presence(pto=alice)

    [item] = await events.notified(DEVICES)  # the last item of the open node
    assert item.get("id") == "current"
    devices = f"<devices xmlns='{DEVICES}'><device id='1'/><device id='2'/></devices>"
    await request(alice_client, "set", publish_xml(DEVICES, devices, "current"))
    await events.notified(DEVICES, count=2)  # and what alice publishes next
    assert events.of(METADATA) == []  # but nothing of a presence node

    # unavailable presence ends it (RFC 6121 §4.6.3)
    stranger.send_presence(pto=alice, ptype="unavailable")
    await stranger.plugin["xep_0199"].ping(
        slixmpp.JID(DOMAIN), timeout=5
    )  # her session has handled it by now
    await request(alice_client, "set", publish_xml(DEVICES, devices, "next"))
    await asyncio.sleep(0.2)
    assert len(events.of(DEVICES)) == 2


async def test_publish_options_may_come_before_the_publish(clients: Clients, server: Server) -> None:
    client = await login(clients, await clients.user("alice"))
    reordered = (
        f"<pubsub xmlns='{PUBSUB}'><publish-options><x xmlns='jabber:x:data' type='submit'>"
        f"<field var='FORM_TYPE' type='hidden'><value>{PUBSUB}#publish-options</value></field>"
        "<field var='pubsub#access_model'><value>open</value></field></x></publish-options>"
        "<publish node='n'><item id='i'><x xmlns='urn:x'/></item></publish></pubsub>"
    )

    await request(client, "set", reordered)

    assert await access_model(server, "alice", "n") == "open"


@pytest.mark.fault
async def test_a_broken_store_says_wait_and_stores_nothing(
    tmp_path: Path, clients: Clients, server: Server
) -> None:
    client = await login(clients, await clients.user("alice"))
    with sqlite3.connect(tmp_path / "nitro.db") as db:  # the items table vanishes under the server
        db.execute("DROP TABLE pep_items")

    with pytest.raises(IqError) as failure:
        await request(client, "set", publish_xml(METADATA, f"<metadata xmlns='{METADATA}'/>", "m"))

    assert failure.value.iq["error"]["condition"] == "internal-server-error"
    assert failure.value.iq["error"]["type"] == "wait"  # RFC 6120 §8.3.3.6: try again later
