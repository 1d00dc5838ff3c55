"""XEP-0356 privileged entity and XEP-0355 namespace delegation for plugins, granted per plugin: slixmpp's
xep_0356 on the component side, raw streams for delegation; what was not granted is <forbidden/>, a
delegated IQ the plugin never answers gets the client an error after the timeout."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import slixmpp
from conftest import Clients, read_until, resolve, result_of, wait_for
from plugin_helpers import SECRET, connect_component, disconnect, plugins_config, raw_authenticated
from slixmpp import JID, Iq
from slixmpp.exceptions import IqError

from nitro.config import Config
from nitro.server import Server

P, Q = "p.localhost", "q.localhost"
DELEGATED = "urn:example:delegated"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    powerful: dict[str, Any] = {
        "mode": "external",
        "subdomain": P,
        "secret": SECRET,
        "privileges": {
            "roster": "both",
            "message": "outgoing",
            "presence": "managed_entity",
            "iq": {"jabber:iq:private": "get"},
        },
        "delegations": [DELEGATED],
        "delegation_timeout": 0.5,
    }
    powerless = {"mode": "external", "subdomain": Q, "secret": SECRET}
    return plugins_config(tmp_path, {"p": powerful, "q": powerless})


def condition(stanza: Any) -> str | None:
    """The condition of the first <error/> (a component's errors are in jabber:component:accept, where
    slixmpp's error interface does not look)."""
    error = next((child for child in stanza.xml if child.tag.endswith("}error")), None)
    found = [] if error is None else [c.tag.split("}")[1] for c in error if not c.tag.endswith("}text")]
    return found[0] if found else None


async def privileged(server: Server, domain: str) -> slixmpp.ComponentXMPP:
    advertised = asyncio.get_running_loop().create_future()

    def setup(component: slixmpp.ComponentXMPP) -> None:
        component.add_event_handler("privileges_advertised", lambda _e: resolve(advertised, 1))

    component = await connect_component(server, domain, plugins=("xep_0030", "xep_0356"), setup=setup)
    if domain == P:
        await asyncio.wait_for(advertised, 5)
    return component


async def test_privileges_are_advertised_and_used(server: Server, clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"))
    bob = await clients.login(await clients.user("bob"))
    await result_of(alice.update_roster(JID("carol@localhost"), name="Carol"))
    component = await privileged(server, P)
    try:
        granted = component.plugin["xep_0356"].granted_privileges["localhost"]
        assert (granted.roster, granted.message) == ("both", "outgoing")
        roster = await component.plugin["xep_0356"].get_roster(JID("alice@localhost"), timeout=5)
        jids = {str(jid) for jid in roster["roster"]["items"]}
        assert jids == {"carol@localhost"}
        await component.plugin["xep_0356"].set_roster(
            JID("alice@localhost"),
            {"dave@localhost": {"name": "Dave", "subscription": "none", "groups": ["g"]}},
            timeout=5,
        )
        stored = await server.storage.rosters.get_item("alice", "dave@localhost")
        assert stored is not None
        assert (stored.name, stored.groups) == ("Dave", ("g",))
        received: list[slixmpp.Message] = []
        bob.add_event_handler("message", received.append)
        on_behalf = component.make_message(
            mto=JID("bob@localhost"), mfrom=JID("alice@localhost"), mbody="from alice"
        )
        component.plugin["xep_0356"].send_privileged_message(on_behalf)
        await wait_for(lambda: len(received) == 1)
        assert received[0]["from"].bare == "alice@localhost"
        assert received[0]["body"] == "from alice"
    finally:
        await disconnect(component)


async def test_managed_entity_gets_every_users_presence(server: Server, clients: Clients) -> None:
    presences: list[slixmpp.Presence] = []
    component = await connect_component(
        server, P, plugins=("xep_0030",), setup=lambda c: c.add_event_handler("presence", presences.append)
    )
    try:
        alice = await clients.login(await clients.user("alice"))  # sends initial presence
        await wait_for(lambda: any(p["from"].bare == "alice@localhost" for p in presences))
        alice.send_presence(pstatus="busy", pshow="dnd")
        await wait_for(lambda: any(p["status"] == "busy" for p in presences))
        await clients.close_all()
        await wait_for(lambda: presences[-1]["type"] == "unavailable")
        assert {str(p["to"]) for p in presences} == {P}
    finally:
        await disconnect(component)


async def test_a_granted_privileged_iq_is_answered_for_the_user(server: Server, clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"))
    stored = alice.make_iq_set()
    query = private_query()
    query[0].text = "kept"
    stored.append(query)
    await result_of(stored.send(timeout=5))
    component = await privileged(server, P)
    try:
        inner = Iq(stype="get", sfrom=JID("alice@localhost"), sto=JID("alice@localhost"))
        asked = ET.Element("{jabber:iq:private}query")
        ET.SubElement(asked, "{example}x")
        inner.append(asked)
        answer = await component.plugin["xep_0356"].send_privileged_iq(inner)
        assert answer["type"] == "result"
        assert answer.xml.findtext("{jabber:iq:private}query/{example}x") == "kept"
    finally:
        await disconnect(component)


async def test_what_was_not_granted_is_forbidden(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    bob = await clients.login(await clients.user("bob"))
    component = await privileged(server, Q)
    try:
        with pytest.raises(IqError) as raised:
            await component.plugin["xep_0356"]._make_get_roster(JID("alice@localhost")).send(timeout=5)
        assert condition(raised.value.iq) == "forbidden"
        errors: list[slixmpp.Message] = []
        component.add_event_handler("message_error", errors.append)
        received: list[slixmpp.Message] = []
        bob.add_event_handler("message", received.append)
        forged = component.make_message(
            mto=JID("bob@localhost"), mfrom=JID("alice@localhost"), mbody="forged"
        )
        component.plugin["xep_0356"]._make_privileged_message(forged).send()
        await wait_for(lambda: len(errors) == 1)
        assert condition(errors[0]) == "forbidden"
        assert received == []
    finally:
        await disconnect(component)
    # an IQ namespace not granted (p may only *get* jabber:iq:private): sent as is, past slixmpp's own check
    component = await privileged(server, P)
    try:
        inner = Iq(stype="set", sfrom=JID("alice@localhost"), sto=JID("alice@localhost"))
        inner.append(private_query())
        outer = component.make_iq(itype="set", ifrom=JID(P), ito=JID("alice@localhost"))
        outer["privileged_iq"].append(inner)
        with pytest.raises(IqError) as raised:
            await outer.send(timeout=5)
        assert condition(raised.value.iq) == "forbidden"
    finally:
        await disconnect(component)


def private_query() -> ET.Element:
    query = ET.Element("{jabber:iq:private}query")
    ET.SubElement(query, "{example}x")
    return query


async def test_delegated_iq_is_answered_by_the_plugin(server: Server, clients: Clients) -> None:
    assert server.bridge is not None
    alice = await clients.login(await clients.user("alice"))
    info = await result_of(alice.plugin["xep_0030"].get_info(jid=JID("localhost"), timeout=5))
    assert DELEGATED in info["disco_info"]["features"]
    reader, writer, data = await raw_authenticated(server.bridge.port, P)
    if b"delegated" not in data:
        data += await read_until(reader, b"delegated")
    assert f'namespace="{DELEGATED}"'.encode() in data
    iq = alice.make_iq_get(queryxmlns=DELEGATED, ito=JID("localhost"))
    pending = asyncio.ensure_future(iq.send(timeout=5))
    request = await read_until(reader, b"</iq>")
    assert b"urn:xmpp:delegation:2" in request
    assert DELEGATED.encode() in request
    found = re.search(rb"<iq [^>]*id=\"(deleg-\d+)\"", request)
    assert found is not None
    inner_id = re.search(rb"<iq xmlns=\"jabber:client\"[^>]*id=\"([^\"]+)\"", request)
    assert inner_id is not None
    writer.write(
        f"<iq type='result' id='{found[1].decode()}' from='{P}' to='localhost'>"
        "<delegation xmlns='urn:xmpp:delegation:2'><forwarded xmlns='urn:xmpp:forward:0'>"
        f"<iq xmlns='jabber:client' type='result' id='{inner_id[1].decode()}' from='localhost'"
        f" to='{alice.boundjid}'><query xmlns='{DELEGATED}'><answer/></query></iq>"
        "</forwarded></delegation></iq>".encode()
    )
    answer = await pending
    assert answer["type"] == "result"
    assert answer.xml.find(f"{{{DELEGATED}}}query/{{{DELEGATED}}}answer") is not None
    writer.close()


async def test_delegated_iq_to_the_own_account_is_answered_by_the_plugin(
    server: Server, clients: Clients
) -> None:
    """No 'to': the sender's own bare JID (a MAM query, say) is delegated too."""
    assert server.bridge is not None
    alice = await clients.login(await clients.user("alice"))
    reader, writer, _data = await raw_authenticated(server.bridge.port, P)
    iq = alice.make_iq_set()
    iq.append(ET.Element(f"{{{DELEGATED}}}query"))
    pending = asyncio.ensure_future(iq.send(timeout=5))
    request = await read_until(reader, b"</iq>")
    found = re.search(rb"<iq [^>]*id=\"(deleg-\d+)\"", request)
    inner_id = re.search(rb"<iq xmlns=\"jabber:client\"[^>]*id=\"([^\"]+)\"", request)
    assert found is not None
    assert inner_id is not None
    writer.write(
        f"<iq type='result' id='{found[1].decode()}' from='{P}' to='localhost'>"
        "<delegation xmlns='urn:xmpp:delegation:2'><forwarded xmlns='urn:xmpp:forward:0'>"
        f"<iq xmlns='jabber:client' type='result' id='{inner_id[1].decode()}'/>"
        "</forwarded></delegation></iq>".encode()
    )
    answer = await pending
    assert answer["type"] == "result"
    assert answer["from"] == JID("alice@localhost")
    writer.close()


async def test_delegated_iq_never_answered_is_an_error_after_the_timeout(
    server: Server, clients: Clients
) -> None:
    assert server.bridge is not None
    alice = await clients.login(await clients.user("alice"))
    _reader, writer, _data = await raw_authenticated(server.bridge.port, P)
    iq = alice.make_iq_get(queryxmlns=DELEGATED, ito=JID("localhost"))
    with pytest.raises(IqError) as raised:
        await iq.send(timeout=5)
    assert raised.value.iq["error"]["condition"] == "service-unavailable"
    assert raised.value.iq["error"]["type"] == "wait"
    writer.close()
    # and with the plugin down, at once
    await wait_for(lambda: server.bridge is not None and not server.bridge.plugins["p"].connected)
    with pytest.raises(IqError):
        await alice.make_iq_get(queryxmlns=DELEGATED, ito=JID("localhost")).send(timeout=5)
