"""A bound session exports to plain data and is restored equal: every field, the modules' slots included
(the upgrade issue hands sessions to a successor process with exactly this)."""

from __future__ import annotations

import json

import slixmpp
from conftest import DOMAIN, Clients, wait_for
from test_stream_management import managed

from nitro.c2s.session import ClientSession
from nitro.modules.csi import HOLDER
from nitro.modules.pep_interests import INTERESTS
from nitro.server import Server
from nitro.xmpp.jid import JID

CARBONS_ON = b"<iq type='set' id='c1'><enable xmlns='urn:xmpp:carbons:2'/></iq>"
ROSTER_GET = b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>"
PRESENCE = b"<presence><priority>7</priority><show>away</show></presence>"
DIRECTED = f"<presence to='carol@{DOMAIN}/x'/>".encode()
INACTIVE = b"<inactive xmlns='urn:xmpp:csi:0'/>"


async def test_a_live_session_round_trips_through_json(server: Server, clients: Clients) -> None:
    alice = await clients.user("alice")
    await clients.user("bob")
    await clients.user("carol")
    bob, _previd = await managed(server, "bob")
    for request in (CARBONS_ON, ROSTER_GET, PRESENCE, DIRECTED, INACTIVE):
        bob.send(request)
    await bob.expect(b'id="r1"')
    bob_jid = JID.parse(f"bob@{DOMAIN}/raw")
    session = server.sessions.get(bob_jid)
    assert isinstance(session, ClientSession)  # the registry is typed by the protocol modules see
    await wait_for(lambda: session.directed_to != frozenset() and session.slots.peek(HOLDER) is not None)
    sender = await clients.login(alice)
    sender.send_message(mto=slixmpp.JID(str(bob_jid)), mbody="kept until acknowledged")
    sender.send_presence(pto=str(bob_jid))  # held back by CSI: bob is inactive
    await wait_for(lambda: session.sm is not None and len(session.sm.unacked) >= 1)
    await wait_for(lambda: bool(session.slots.get(HOLDER).held))

    exported = session.export()
    data = json.loads(json.dumps(exported))
    restored = ClientSession.restore(server, data)

    assert exported["state"] == "established"
    assert restored.export() == {**exported, "state": "detached"}  # no connection until a stream attaches
    assert restored.resource.jid == session.resource.jid
    assert restored.resource.priority == 7
    assert restored.resource.flags == session.resource.flags >= {"carbons", "interested"}
    assert restored.resource.directed_to == frozenset({JID.parse(f"carol@{DOMAIN}/x")})
    assert restored.detached
    assert restored.sm is not None
    assert session.sm is not None
    assert restored.sm.h_out == session.sm.h_out
    bodies = [stanza.findtext("{jabber:client}body") for stanza in restored.sm.unacked]
    assert "kept until acknowledged" in bodies
    held = restored.slots.get(HOLDER)
    assert held.inactive
    assert list(held.held) == list(session.slots.get(HOLDER).held)
    assert held in restored.slots.filters  # still holding back what an inactive client can do without
    assert restored.slots.get(INTERESTS).nodes == session.slots.get(INTERESTS).nodes
    bob.writer.close()


async def test_state_of_a_module_that_is_not_loaded_is_dropped_not_fatal(
    server: Server, clients: Clients
) -> None:
    await clients.user("bob")
    bob, _previd = await managed(server, "bob")
    session = server.sessions.get(JID.parse(f"bob@{DOMAIN}/raw"))
    assert isinstance(session, ClientSession)  # the registry is typed by the protocol modules see
    data = session.export()
    data["slots"]["no-such-module"] = {"x": 1}
    restored = ClientSession.restore(server, data)
    assert restored.export()["slots"] == session.export()["slots"]
    bob.writer.close()
