"""Presence broadcasts across the nodes of one cluster (the harness of test_cluster_nats.py): a contact on
another node gets each copy through NATS, and a contact the user blocks (XEP-0191 §3.3) gets none."""

from __future__ import annotations

import asyncio

import pytest
from conftest import Clients
from nats_servers import nats_server
from redis_servers import redis_servers
from test_cluster_nats import befriend, nodes, sees, until

__all__ = ["nats_server", "nodes", "redis_servers"]

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


async def test_a_broadcast_crosses_nodes_but_not_to_a_blocked_contact(nodes: list[Clients]) -> None:
    a, b, c = nodes
    alice_jid, bob_jid, carol_jid = [await a.user(name) for name in ("alice", "bob", "carol")]
    for one, other in (("alice", "bob"), ("alice", "carol"), ("bob", "carol")):
        await befriend(a, one, other)
    await a.server.storage.blocklist.add("alice", [carol_jid])
    bob = await b.login(bob_jid)
    carol = await c.login(carol_jid)
    seen: dict[str, list[tuple[str, str]]] = {"bob": [], "carol": []}
    for name, client in (("bob", bob), ("carol", carol)):
        log = seen[name]
        client.add_event_handler("presence_available", lambda p, log=log: log.append((str(p["from"]), "on")))
        client.add_event_handler(
            "presence_unavailable", lambda p, log=log: log.append((str(p["from"]), "off"))
        )
    await until(sees(a.server, bob.boundjid))
    await until(sees(a.server, carol.boundjid))

    alice = await a.login(alice_jid)
    await until(lambda: (str(alice.boundjid), "on") in seen["bob"])  # from node a to node b
    alice.disconnect()
    await until(lambda: (str(alice.boundjid), "off") in seen["bob"])
    await asyncio.sleep(0.3)
    assert [entry for entry in seen["carol"] if entry[0].startswith(alice_jid)] == []  # she blocks carol
