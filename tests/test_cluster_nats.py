"""Nodes of one cluster in this process (a shared SQLite file, a ring of three redis-servers, a NATS server
of the test's own), driven by slixmpp clients: chat, presence and carbons across nodes, a full JID bound on
two nodes, NATS going away and coming back, wrong NATS credentials and a node name claimed twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import slixmpp
from conftest import Clients, make_config
from nats_servers import NatsServer, nats_server
from redis_servers import RedisServer, redis_servers

from nitro.config import Config
from nitro.server import Server, running_server

__all__ = ["nats_server", "redis_servers"]

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

RING = {"health_interval": 0.2, "health_timeout": 0.3, "failures_before_out": 2, "socket_timeout": 0.3}
TTL = 3.0


def node_config(
    tmp_path: Path, redis: list[RedisServer], nats: NatsServer, node: str, **cluster: Any
) -> Config:
    settings: dict[str, Any] = {
        "node": node,
        "name": "test",
        "nats": [nats.url],
        "nats_user": nats.user,
        "nats_password": nats.password,
        "heartbeat_ttl": TTL,
        "request_timeout": 1.0,
        **cluster,
    }
    ring = {"instances": [s.url for s in redis], "prefix": "cluster", **RING}
    return make_config(tmp_path, redis=ring, cluster=settings, http={"enabled": False})


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def sees(server: Server, jid: slixmpp.JID) -> Callable[[], bool]:
    """`server` knows the full JID (its own or announced by another node)."""
    from nitro.xmpp.jid import JID

    return lambda: server.sessions.resource(JID.parse(str(jid))) is not None


@pytest.fixture
async def nodes(
    tmp_path: Path, redis_servers: list[RedisServer], nats_server: NatsServer
) -> AsyncIterator[list[Clients]]:
    """Three nodes, each with its pool of clients."""
    async with AsyncExitStack() as stack:
        pools = []
        for name in ("a", "b", "c"):
            config = node_config(tmp_path, redis_servers, nats_server, name)
            server = await stack.enter_async_context(running_server(config))
            pool = Clients(server)
            stack.push_async_callback(pool.close_all)
            pools.append(pool)
        yield pools


async def befriend(pool: Clients, one: str, other: str) -> None:
    """Mutual subscription, written through the SQL layer."""
    from nitro.storage.models import RosterItem

    rosters = pool.server.storage.rosters
    await rosters.put(one, RosterItem(f"{other}@localhost", subscription="both"))
    await rosters.put(other, RosterItem(f"{one}@localhost", subscription="both"))


async def test_chat_and_presence_across_nodes(nodes: list[Clients]) -> None:
    a, b, _c = nodes
    alice_jid, bob_jid = await a.user("alice"), await a.user("bob")
    await befriend(a, "alice", "bob")
    alice = await a.login(alice_jid)
    seen: list[tuple[str, str]] = []
    alice.add_event_handler("presence_available", lambda p: seen.append((str(p["from"]), "available")))
    alice.add_event_handler("presence_unavailable", lambda p: seen.append((str(p["from"]), "unavailable")))
    await until(sees(b.server, alice.boundjid))
    bob = await b.login(bob_jid)
    await until(lambda: (str(bob.boundjid), "available") in seen)  # bob's presence crossed from b to a
    received: list[str] = []
    alice.add_event_handler("message", lambda m: received.append(m["body"]))
    for index in range(50):
        bob.send_message(mto=slixmpp.JID(alice_jid), mbody=f"m{index}", mtype="chat")  # to the bare JID
    await until(lambda: len(received) == 50)
    assert received == [f"m{index}" for index in range(50)]  # in the order bob sent them
    back: list[str] = []
    bob.add_event_handler("message", lambda m: back.append(m["body"]))
    alice.send_message(mto=bob.boundjid, mbody="to your full JID", mtype="chat")
    await until(lambda: back == ["to your full JID"])
    bob.disconnect()
    await until(lambda: (str(bob.boundjid), "unavailable") in seen)
