"""Nodes of one cluster in this process (a shared SQLite file, a ring of three redis-servers, a NATS server
of the test's own), driven by slixmpp clients: chat, presence and carbons across nodes, a full JID bound on
two nodes, NATS going away and coming back, wrong NATS credentials and a node name claimed twice."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import slixmpp
from conftest import Clients, make_config, result_of
from nats_servers import NatsServer, nats_server
from redis_servers import RedisServer, redis_servers
from slixmpp.exceptions import IqError

from nitro.cluster.link import ClusterError
from nitro.config import Config
from nitro.server import Server, running_server
from nitro.xmpp.jid import JID

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
    return lambda: server.sessions.resource(JID.parse(str(jid))) is not None


@asynccontextmanager
async def running_nodes(
    tmp_path: Path, redis_servers: list[RedisServer], nats_server: NatsServer, names: tuple[str, ...]
) -> AsyncIterator[list[Clients]]:
    """One running node per name, each with its pool of clients (closed, then stopped, on exit)."""
    async with AsyncExitStack() as stack:
        pools = []
        for name in names:
            config = node_config(tmp_path, redis_servers, nats_server, name)
            server = await stack.enter_async_context(running_server(config))
            pool = Clients(server)
            stack.push_async_callback(pool.close_all)
            pools.append(pool)
        yield pools


@pytest.fixture
async def nodes(
    tmp_path: Path, redis_servers: list[RedisServer], nats_server: NatsServer
) -> AsyncIterator[list[Clients]]:
    """Three nodes, each with its pool of clients."""
    async with running_nodes(tmp_path, redis_servers, nats_server, ("a", "b", "c")) as pools:
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


async def test_a_second_node_with_a_live_name_refuses_to_start(
    tmp_path: Path, redis_servers: list[RedisServer], nats_server: NatsServer
) -> None:
    async with running_server(node_config(tmp_path, redis_servers, nats_server, "a")):
        with pytest.raises(ClusterError, match="node name 'a' is already taken by a live node"):
            async with running_server(node_config(tmp_path, redis_servers, nats_server, "a")):
                pass
        async with running_server(node_config(tmp_path, redis_servers, nats_server, "b")) as b:
            assert b.cluster is not None
            members = await b.cluster.members()
            assert [m["node"] for m in members] == ["a", "b"]


async def test_wrong_nats_credentials_stop_the_start_with_a_clear_error(
    tmp_path: Path, redis_servers: list[RedisServer], nats_server: NatsServer
) -> None:
    config = node_config(tmp_path, redis_servers, nats_server, "a", nats_password="not the password")
    with pytest.raises(
        ClusterError, match=r"cannot connect to NATS at nats://127\.0\.0\.1:\d+: .*[Aa]uthorization"
    ):
        async with running_server(config):
            pass


async def test_carbons_reach_resources_on_two_nodes(nodes: list[Clients]) -> None:
    a, b, c = nodes
    alice_jid, bob_jid = await a.user("alice"), await a.user("bob")
    await befriend(a, "alice", "bob")
    phone = await a.login(alice_jid, plugins=["xep_0280"])
    laptop = await b.login(alice_jid, plugins=["xep_0280"])
    bob = await c.login(bob_jid)
    for client in (phone, laptop):
        await client.plugin["xep_0280"].enable()
    for server in (a.server, b.server, c.server):
        await until(
            lambda s=server: all(  # type: ignore[misc]
                (r := s.sessions.resource(JID.parse(str(x.boundjid)))) is not None and r.has("carbons")
                for x in (phone, laptop)
            )
        )
    carbons: list[tuple[str, str]] = []
    laptop.add_event_handler(
        "carbon_sent", lambda m: carbons.append(("laptop sent", m["carbon_sent"]["body"]))
    )
    phone.add_event_handler(
        "carbon_received", lambda m: carbons.append(("phone received", m["carbon_received"]["body"]))
    )
    got: list[str] = []
    bob.add_event_handler("message", lambda m: got.append(m["body"]))
    laptop_got: list[str] = []
    laptop.add_event_handler("message", lambda m: laptop_got.append(m["body"]))
    phone.send_message(mto=slixmpp.JID(bob.boundjid.bare), mbody="from the phone", mtype="chat")
    await until(lambda: got == ["from the phone"] and ("laptop sent", "from the phone") in carbons)
    bob.send_message(mto=laptop.boundjid, mbody="to the laptop", mtype="chat")
    await until(lambda: laptop_got == ["to the laptop"] and ("phone received", "to the laptop") in carbons)


async def test_binding_a_full_jid_held_on_another_node_replaces_it(nodes: list[Clients]) -> None:
    a, b, _c = nodes
    alice_jid = await a.user("alice")
    first = await a.login(alice_jid + "/desk")
    errors: list[str] = []
    first.add_event_handler("stream_error", lambda e: errors.append(e["condition"]))
    await until(sees(b.server, first.boundjid))
    second = await b.login(alice_jid + "/desk")
    await until(lambda: errors == ["conflict"])
    await until(lambda: a.server.sessions.get(JID.parse(str(second.boundjid))) is None)
    resource = a.server.sessions.resource(JID.parse(str(second.boundjid)))
    await until(
        lambda: (
            (r := a.server.sessions.resource(JID.parse(str(second.boundjid)))) is not None and r.node == "b"
        )
    )
    assert resource is None or resource.node in ("a", "b")


async def test_two_resources_on_two_nodes_sending_at_once(nodes: list[Clients]) -> None:
    a, b, c = nodes
    alice_jid, bob_jid = await a.user("alice"), await a.user("bob")
    on_a = await a.login(alice_jid)
    on_b = await b.login(alice_jid)
    bob = await c.login(bob_jid)
    await until(sees(a.server, bob.boundjid))
    await until(sees(b.server, bob.boundjid))
    got: list[str] = []
    bob.add_event_handler("message", lambda m: got.append(m["body"]))
    for index in range(40):
        on_a.send_message(mto=bob.boundjid, mbody=f"a{index}", mtype="chat")
        on_b.send_message(mto=bob.boundjid, mbody=f"b{index}", mtype="chat")
    await until(lambda: len(got) == 80)
    assert [m for m in got if m.startswith("a")] == [f"a{i}" for i in range(40)]  # each sender in order
    assert [m for m in got if m.startswith("b")] == [f"b{i}" for i in range(40)]


async def test_nats_stopped_and_back_nodes_serve_their_own_and_store_the_rest(
    tmp_path: Path, redis_servers: list[RedisServer], nats_server: NatsServer
) -> None:
    async with running_nodes(tmp_path, redis_servers, nats_server, ("a", "b")) as pools:
        a, b = pools
        alice_jid, bob_jid, carol_jid = await a.user("alice"), await a.user("bob"), await a.user("carol")
        alice = await a.login(alice_jid)
        carol = await a.login(carol_jid)
        bob = await b.login(bob_jid)
        await until(sees(a.server, bob.boundjid))
        nats_server.stop()
        await until(lambda: a.server.cluster is not None and not a.server.cluster.link.connected)
        got: list[str] = []
        carol.add_event_handler("message", lambda m: got.append(m["body"]))
        alice.send_message(mto=carol.boundjid, mbody="same node", mtype="chat")  # a serves its own users
        await until(lambda: got == ["same node"])
        alice.send_message(mto=bob.boundjid, mbody="while NATS is down", mtype="chat")
        await until(lambda: a.server.cluster is not None and a.server.cluster.forwarder.fallbacks >= 1)
        assert [m.id for m in await a.server.storage.offline.list("bob")]  # stored, not lost
        nats_server.start()
        await until(
            lambda: all(p.server.cluster is not None and p.server.cluster.link.connected for p in pools), 15
        )
        await until(sees(a.server, bob.boundjid), 15)
        bob_got: list[str] = []
        bob.add_event_handler("message", lambda m: bob_got.append(m["body"]))
        alice.send_message(mto=bob.boundjid, mbody="NATS is back", mtype="chat")
        await until(lambda: bob_got == ["NATS is back"])


async def test_a_ring_redis_dying_while_nodes_route_loses_no_message_and_no_node(
    nodes: list[Clients], redis_servers: list[RedisServer]
) -> None:
    a, b, c = nodes
    alice_jid, bob_jid = await a.user("alice"), await a.user("bob")
    alice = await a.login(alice_jid)
    bob = await b.login(bob_jid)
    await until(sees(a.server, bob.boundjid))
    got: list[str] = []
    bob.add_event_handler("message", lambda m: got.append(m["body"]))
    for index in range(60):
        if index == 20:
            redis_servers[0].kill()  # holds some heartbeats, session records and cached values
        alice.send_message(mto=bob.boundjid, mbody=f"m{index}", mtype="chat")
        await asyncio.sleep(0.03)
    await until(lambda: len(got) == 60)
    assert got == [f"m{index}" for index in range(60)]
    await asyncio.sleep(TTL)  # a heartbeat TTL later no node was declared dead for a lost key
    for pool in (a, b, c):
        assert pool.server.cluster is not None
        assert pool.server.cluster.sweeper.swept == []
    cluster = c.server.cluster
    assert cluster is not None
    assert [m["node"] for m in await cluster.members()] == ["a", "b", "c"]


async def test_iqs_and_roster_pushes_cross_nodes(nodes: list[Clients]) -> None:
    a, b, _c = nodes
    alice_jid, bob_jid = await a.user("alice"), await a.user("bob")
    alice = await a.login(alice_jid)
    bob = await b.login(bob_jid)
    await until(sees(a.server, bob.boundjid))
    rtt = await alice.plugin["xep_0199"].ping(bob.boundjid, timeout=5)  # answered by bob's client on b
    assert rtt is not None
    alice_on_b = await b.login(alice_jid)
    pushes: list[str] = []
    alice_on_b.add_event_handler("roster_update", lambda iq: pushes.extend(iq["roster"]["items"]))
    await alice_on_b.get_roster()  # requests the roster: "interested" in pushes (RFC 6121 §2.1.6)
    await until(
        lambda: (
            (r := a.server.sessions.resource(JID.parse(str(alice_on_b.boundjid)))) is not None
            and r.has("interested")
        )
    )
    await result_of(alice.update_roster(slixmpp.JID("carol@localhost"), name="Carol"))  # through node a
    await until(lambda: "carol@localhost" in pushes)


def node_file(tmp_path: Path, redis: list[RedisServer], nats: NatsServer, password: str) -> Path:
    """A node's config file as an operator writes it."""
    instances = ", ".join(f'"{s.url}"' for s in redis)
    config = tmp_path / "node.toml"
    config.write_text(
        f'[storage]\ndsn = "sqlite+aiosqlite:///{tmp_path}/nitro.db"\n'
        f"[c2s]\nport = 0\ndirect_tls_port = 0\n[http]\nenabled = false\n[metrics]\nport = 0\n"
        f'[tls]\ncert = "tls/cert.pem"\nkey = "tls/key.pem"\n'
        f'[redis]\ninstances = [{instances}]\nprefix = "cluster"\n'
        f'[cluster]\nnode = "a"\nnats = ["{nats.url}"]\n'
        f'nats_user = "nitro"\nnats_password = "{password}"\n'
    )
    return config


async def test_nitro_serve_with_wrong_nats_credentials_exits_with_one_clear_line(
    tmp_path: Path, redis_servers: list[RedisServer], nats_server: NatsServer
) -> None:
    config = node_file(tmp_path, redis_servers, nats_server, "wrong")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nitro", "--config", str(config), "serve",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert "cannot serve: cannot connect to NATS at nats://127.0.0.1:" in out.decode()
    assert "Authorization Violation" in out.decode()
    assert "Traceback" not in out.decode()


async def test_a_block_made_through_one_node_holds_on_the_others_at_once(nodes: list[Clients]) -> None:
    a, b, c = nodes
    alice_jid, carol_jid = await a.user("alice"), await a.user("carol")
    alice = await a.login(alice_jid, plugins=["xep_0191"])
    alice_on_b = await b.login(alice_jid)
    carol = await c.login(carol_jid)
    await until(sees(c.server, alice.boundjid))
    await until(sees(c.server, alice_on_b.boundjid))
    got: list[str] = []
    for client in (alice, alice_on_b):
        client.add_event_handler("message", lambda m: got.append(m["body"]))
    carol.send_message(mto=slixmpp.JID(alice_jid), mbody="before", mtype="chat")  # node c reads alice's list
    await until(lambda: "before" in got)
    await alice.plugin["xep_0191"].block([slixmpp.JID(carol_jid)], timeout=10)  # through node a
    errors: list[str] = []
    carol.add_event_handler("message_error", lambda m: errors.append(m["error"]["condition"]))
    carol.send_message(mto=slixmpp.JID(alice_jid), mbody="after", mtype="chat")
    await until(lambda: errors != [])
    assert "after" not in got


async def test_nitro_check_names_wrong_nats_credentials_and_lists_live_nodes(
    tmp_path: Path, redis_servers: list[RedisServer], nats_server: NatsServer
) -> None:
    async def check(password: str) -> tuple[int | None, str]:
        config = node_file(tmp_path, redis_servers, nats_server, password)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nitro", "--config", str(config), "check", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        return process.returncode, out.decode()

    code, out = await check("wrong")
    assert code == 1
    assert "error: cluster: cannot connect to NATS at nats://127.0.0.1:" in out
    async with running_server(node_config(tmp_path, redis_servers, nats_server, "b")):
        code, out = await check(nats_server.password)
    assert "ok: cluster: NATS at nats://127.0.0.1:" in out
    assert "ok: cluster: live nodes b (0 sessions)" in out


async def test_a_node_stopped_cleanly_leaves_at_once(
    tmp_path: Path, redis_servers: list[RedisServer], nats_server: NatsServer
) -> None:
    async with running_server(node_config(tmp_path, redis_servers, nats_server, "a")) as a_server:
        a = Clients(a_server)
        try:
            alice_jid, bob_jid = await a.user("alice"), await a.user("bob")
            await befriend(a, "alice", "bob")
            alice = await a.login(alice_jid)
            seen: list[tuple[str, str]] = []
            alice.add_event_handler(
                "presence_unavailable", lambda p: seen.append((str(p["from"]), "unavailable"))
            )
            async with running_server(node_config(tmp_path, redis_servers, nats_server, "b")) as b_server:
                b = Clients(b_server)
                bob = await b.login(bob_jid)
                await until(sees(a_server, bob.boundjid))
                bob_full = str(bob.boundjid)
            # b is gone (SIGTERM does this): bob's client was told <system-shutdown/>, alice saw him leave
            await until(lambda: (bob_full, "unavailable") in seen, 5)
            assert a_server.sessions.resources(JID.parse(bob_jid)) == []
            assert a_server.cluster is not None
            assert [m["node"] for m in await a_server.cluster.members()] == ["a"]
        finally:
            await a.close_all()


async def test_a_node_that_stops_answering_gets_nothing_lost_iqs_bounce_messages_wait_offline(
    nodes: list[Clients],
) -> None:
    a, b, _c = nodes
    alice_jid, bob_jid = await a.user("alice"), await a.user("bob")
    alice = await a.login(alice_jid)
    bob = await b.login(bob_jid)
    await until(sees(a.server, bob.boundjid))
    assert b.server.cluster is not None
    await b.server.cluster.link.close()  # cut off: it neither answers nor announces any more
    iq = alice.Iq()
    iq["type"] = "get"
    iq["to"] = bob.boundjid
    iq.enable("ping")
    with pytest.raises(IqError) as refused:
        await iq.send(timeout=10)
    assert refused.value.iq["error"]["condition"] == "service-unavailable"  # RFC 6121 §8.5.3.1
    alice.send_message(mto=bob.boundjid, mbody="kept for later", mtype="chat")  # b's resources left out now
    for _ in range(250):
        stored = await a.server.storage.offline.list("bob")
        if stored:
            break
        await asyncio.sleep(0.02)
    assert len(stored) == 1
    assert b"kept for later" in stored[0].stanza
