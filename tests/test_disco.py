"""Service discovery (XEP-0030) and the server's entity capabilities (XEP-0115), as transcripts."""

from __future__ import annotations

from typing import Any

import pytest
import slixmpp
from conftest import DOMAIN, Clients
from slixmpp.exceptions import IqError

from nitro.core.disco import Identity
from nitro.modules.disco import CAPS_NODE, caps_ver
from nitro.server import Server
from nitro.storage import RosterItem, Subscription
from nitro.xmpp import ns


def test_caps_ver_of_the_xep_0115_simple_example() -> None:
    """XEP-0115 §5.2: Exodus 0.9.1 with four features hashes to QgayPKawpkPSDYmwT/WM94uAlu0=."""
    identities = [Identity("client", "pc", "Exodus 0.9.1")]
    features = [
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items",
        "http://jabber.org/protocol/muc",
        "http://jabber.org/protocol/caps",
    ]
    assert caps_ver(identities, features) == "QgayPKawpkPSDYmwT/WM94uAlu0="
    assert caps_ver(identities, reversed(features)) == "QgayPKawpkPSDYmwT/WM94uAlu0="  # order-free


def _identities(iq: Any) -> set[tuple[str, str, str | None]]:
    return {(category, type_, name) for category, type_, _lang, name in iq["disco_info"]["identities"]}


def _condition(error: pytest.ExceptionInfo[IqError]) -> str:
    return str(error.value.iq["error"]["condition"])


async def test_server_info_lists_identity_and_every_module_feature(clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"))

    info = await alice.plugin["xep_0030"].get_info(jid=slixmpp.JID(DOMAIN), local=False)

    assert ("server", "im", "Nitro") in _identities(info)
    features = set(info["disco_info"]["features"])
    assert {
        ns.DISCO_INFO,
        ns.DISCO_ITEMS,
        ns.PING,
        ns.VERSION,
        ns.TIME,
        ns.REGISTER,
        ns.COMMANDS,
    } <= features


async def test_caps_in_stream_features_hash_the_disco_info_answer(clients: Clients) -> None:
    features: list[Any] = []

    def capture(stanza: Any) -> Any:
        if stanza.xml.tag == f"{{{ns.STREAM}}}features":
            features.append(stanza.xml)
        return stanza

    alice = await clients.login(await clients.user("alice"), setup=lambda c: c.add_filter("in", capture))

    caps = [c for f in features for c in f.findall(f"{{{ns.CAPS}}}c")]
    assert len(caps) == 1, "caps only in the features after authentication (XEP-0115 §6.3)"
    assert caps[0].get("hash") == "sha-1"
    assert caps[0].get("node") == CAPS_NODE
    info = await alice.plugin["xep_0030"].get_info(jid=slixmpp.JID(DOMAIN), local=False)
    identities = [Identity(c, t, n) for c, t, _lang, n in info["disco_info"]["identities"]]
    assert caps[0].get("ver") == caps_ver(identities, info["disco_info"]["features"])

    # XEP-0115 §6.2: asking for node#ver gives the same answer, naming the node
    node = f"{CAPS_NODE}#{caps[0].get('ver')}"
    by_node = await alice.plugin["xep_0030"].get_info(jid=slixmpp.JID(DOMAIN), node=node, local=False)
    assert by_node["disco_info"]["node"] == node
    assert set(by_node["disco_info"]["features"]) == set(info["disco_info"]["features"])


async def test_unknown_node_on_the_server_is_item_not_found(clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"))

    with pytest.raises(IqError) as info_error:
        await alice.plugin["xep_0030"].get_info(jid=slixmpp.JID(DOMAIN), node="no-such-node", local=False)
    with pytest.raises(IqError) as items_error:
        await alice.plugin["xep_0030"].get_items(jid=slixmpp.JID(DOMAIN), node="no-such-node", local=False)

    assert _condition(info_error) == "item-not-found"
    assert _condition(items_error) == "item-not-found"


async def test_server_items_are_empty(clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"))

    items = await alice.plugin["xep_0030"].get_items(jid=slixmpp.JID(DOMAIN), local=False)

    assert items["type"] == "result"
    assert list(items["disco_items"]["items"]) == []


async def test_an_account_describes_itself_to_its_owner(clients: Clients) -> None:
    alice_jid = await clients.user("alice")
    alice = await clients.login(alice_jid)

    info = await alice.plugin["xep_0030"].get_info(jid=slixmpp.JID(alice_jid), local=False)
    items = await alice.plugin["xep_0030"].get_items(jid=slixmpp.JID(alice_jid), local=False)

    assert ("account", "registered", None) in _identities(info)
    assert list(items["disco_items"]["items"]) == []


async def test_an_account_is_hidden_from_strangers_and_missing_accounts_look_the_same(
    clients: Clients,
) -> None:
    alice_jid = await clients.user("alice")
    bob = await clients.login(await clients.user("bob"))

    with pytest.raises(IqError) as existing:
        await bob.plugin["xep_0030"].get_info(jid=slixmpp.JID(alice_jid), local=False)
    with pytest.raises(IqError) as missing:
        await bob.plugin["xep_0030"].get_info(jid=slixmpp.JID(f"nobody@{DOMAIN}"), local=False)
    with pytest.raises(IqError) as items:
        await bob.plugin["xep_0030"].get_items(jid=slixmpp.JID(alice_jid), local=False)

    assert _condition(existing) == _condition(missing) == _condition(items) == "service-unavailable"


@pytest.mark.parametrize(
    ("subscription", "visible"), [("from", True), ("both", True), ("to", False), ("none", False)]
)
async def test_an_account_is_visible_to_contacts_it_shares_presence_with(
    server: Server, clients: Clients, subscription: Subscription, visible: bool
) -> None:
    alice_jid = await clients.user("alice")
    bob_jid = await clients.user("bob")
    await server.storage.rosters.put("alice", RosterItem(bob_jid, subscription=subscription))
    bob = await clients.login(bob_jid)

    if visible:
        info = await bob.plugin["xep_0030"].get_info(jid=slixmpp.JID(alice_jid), local=False)
        assert ("account", "registered", None) in _identities(info)
    else:
        with pytest.raises(IqError) as error:
            await bob.plugin["xep_0030"].get_info(jid=slixmpp.JID(alice_jid), local=False)
        assert _condition(error) == "service-unavailable"
