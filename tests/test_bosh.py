"""BOSH (XEP-0124, XEP-0206) end to end: a BOSH client over aiohttp's client and slixmpp over TCP, both ways,
on a real server and a real HTTP endpoint on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import DOMAIN, PASSWORD, Clients, make_config, next_event, started_server, wait_for
from lxml import etree
from slixmpp import JID

from integration.boshclient import CLIENT, SM, STREAM, BoshClient, Terminated, local
from nitro.server import Server
from nitro.storage.models import RosterItem
from nitro.transports import bosh

CARBONS = "urn:xmpp:carbons:2"
MAM = "urn:xmpp:mam:2"
ROSTER = "jabber:iq:roster"

NewClient = Callable[[], BoshClient]


@contextlib.asynccontextmanager
async def endpoint(server: Server) -> AsyncIterator[str]:
    """/http-bind on a loopback port of our own (the HTTP server module calls the same add_routes)."""
    app = web.Application()
    bosh.add_routes(app, server)
    runner = web.AppRunner(app, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}{bosh.PATH}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def bosh_url(server: Server) -> AsyncIterator[str]:
    async with endpoint(server) as url:
        yield url


@pytest.fixture
async def new_client(http: aiohttp.ClientSession, bosh_url: str) -> AsyncIterator[NewClient]:
    made: list[BoshClient] = []

    def make() -> BoshClient:
        made.append(BoshClient(http, bosh_url))
        return made[-1]

    yield make
    for client in made:
        with contextlib.suppress(Exception):
            await client.terminate()


async def bosh_login(clients: Clients, new_client: NewClient, name: str, resource: str = "web") -> BoshClient:
    await clients.user(name)
    client = new_client()
    await client.login(name, PASSWORD, resource)
    return client


def message(to: str, text: str) -> str:
    return f"<message xmlns='{CLIENT}' to='{to}' type='chat'><body>{text}</body></message>"


def is_message(text: str) -> Callable[[etree._Element], bool]:
    return lambda e: local(e) == "message" and e.findtext(f"{{{CLIENT}}}body") == text


async def befriend(server: Server, a: str, b: str) -> None:
    await server.storage.rosters.put(a.split("@")[0], RosterItem(b, subscription="both"))
    await server.storage.rosters.put(b.split("@")[0], RosterItem(a, subscription="both"))


async def test_login_binds_a_resource_and_the_roster_answers(clients: Clients, new_client: NewClient) -> None:
    alice = await bosh_login(clients, new_client, "alice")
    assert alice.jid == f"alice@{DOMAIN}/web"
    creation = alice.creation
    assert creation is not None
    assert creation.get("from") == DOMAIN
    assert creation.get("{urn:xmpp:xbosh}restartlogic") == "true"
    result = await alice.iq(f"<iq xmlns='{CLIENT}' type='get'><query xmlns='{ROSTER}'/></iq>")
    assert result.get("type") == "result"
    assert result.find(f"{{{ROSTER}}}query") is not None


async def test_chat_with_a_tcp_client_both_ways(
    server: Server, clients: Clients, new_client: NewClient
) -> None:
    alice = await bosh_login(clients, new_client, "alice")
    bob = await clients.login(await clients.user("bob"))
    await befriend(server, "alice@localhost", "bob@localhost")
    arrival = asyncio.ensure_future(next_event(bob, "message"))
    await alice.send(message("bob@localhost", "hello over BOSH"))
    received = await arrival
    assert received["body"] == "hello over BOSH"
    assert str(received["from"]) == alice.jid
    bob.send_message(mto=JID(alice.jid), mbody="hello over TCP", mtype="chat")
    answer = await alice.recv(is_message("hello over TCP"))
    assert answer.get("from", "").startswith("bob@localhost/")
    for n in range(20):  # a burst both ways stays in order
        bob.send_message(mto=JID(alice.jid), mbody=f"burst {n}", mtype="chat")
    bodies = [
        (await alice.recv(lambda e: local(e) == "message")).findtext(f"{{{CLIENT}}}body") for _ in range(20)
    ]
    assert bodies == [f"burst {n}" for n in range(20)]


async def test_presence_reaches_contacts_both_ways(
    server: Server, clients: Clients, new_client: NewClient
) -> None:
    await clients.user("alice")
    bob_jid = await clients.user("bob")
    await befriend(server, "alice@localhost", "bob@localhost")
    bob = await clients.login(bob_jid)
    alice = new_client()
    await alice.login("alice", PASSWORD, "web")
    online: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def from_alice(presence: Any) -> None:  # bob's own presence may still be on its way back to him
        if str(presence["from"]) == alice.jid and not online.done():
            online.set_result(presence)

    bob.add_event_handler("presence_available", from_alice)
    await alice.send(f"<presence xmlns='{CLIENT}'><status>on the web</status></presence>")
    seen = await asyncio.wait_for(online, 10)
    assert seen["status"] == "on the web"
    bobs = await alice.recv(lambda e: local(e) == "presence" and (e.get("from") or "").startswith("bob@"))
    assert bobs.get("type") is None  # bob's current presence, from the probe
    offline = asyncio.ensure_future(next_event(bob, "presence_unavailable"))
    await alice.terminate(f"<presence xmlns='{CLIENT}' type='unavailable'/>")
    assert str((await offline)["from"]) == alice.jid


async def test_carbons_copy_a_tcp_resources_chat_to_the_bosh_resource(
    server: Server, clients: Clients, new_client: NewClient
) -> None:
    alice_web = await bosh_login(clients, new_client, "alice")
    alice_phone = await clients.login("alice@localhost", plugins=["xep_0280"])
    bob = await clients.login(await clients.user("bob"))
    enabled = await alice_web.iq(f"<iq xmlns='{CLIENT}' type='set'><enable xmlns='{CARBONS}'/></iq>")
    assert enabled.get("type") == "result"
    arrival = asyncio.ensure_future(
        next_event(bob, "message")
    )  # waiting before it is sent: it may come first
    alice_phone.send_message(mto=JID("bob@localhost"), mbody="from my phone", mtype="chat")
    carbon = await alice_web.recv(lambda e: e.find(f"{{{CARBONS}}}sent") is not None)
    forwarded = carbon.find(f"{{{CARBONS}}}sent/{{urn:xmpp:forward:0}}forwarded/{{{CLIENT}}}message")
    assert forwarded is not None
    assert forwarded.findtext(f"{{{CLIENT}}}body") == "from my phone"
    assert (await arrival)["body"] == "from my phone"


async def test_the_archive_answers_over_bosh(server: Server, clients: Clients, new_client: NewClient) -> None:
    alice = await bosh_login(clients, new_client, "alice")
    bob = await clients.login(await clients.user("bob"))
    await befriend(server, "alice@localhost", "bob@localhost")
    bob.send_message(mto=JID(alice.jid), mbody="archived one", mtype="chat")
    await alice.recv(is_message("archived one"))
    arrival = asyncio.ensure_future(next_event(bob, "message"))  # before sending: it may arrive first
    await alice.send(message("bob@localhost", "archived two"))
    await arrival
    await alice.send(f"<iq xmlns='{CLIENT}' type='set' id='mam1'><query xmlns='{MAM}' queryid='q1'/></iq>")
    results: list[etree._Element] = []
    while True:
        got = await alice.recv(lambda e: local(e) in ("message", "iq"))
        if local(got) == "iq":
            assert got.get("id") == "mam1"
            assert got.get("type") == "result"
            break
        results.append(got)
    forwarded = f"{{{MAM}}}result/{{urn:xmpp:forward:0}}forwarded/{{{CLIENT}}}message/{{{CLIENT}}}body"
    assert [m.findtext(forwarded) for m in results] == ["archived one", "archived two"]


async def enable_resumption(client: BoshClient) -> str:
    await client.send(f"<enable xmlns='{SM}' resume='true'/>")
    enabled = await client.recv(lambda e: local(e) == "enabled")
    assert enabled.get("resume") == "true"
    return enabled.get("id") or ""


async def resume(client: BoshClient, previd: str) -> list[etree._Element]:
    """Log in on a new BOSH session and resume `previd` (XEP-0198 §5): the stanzas it resent."""
    await client.login("alice", PASSWORD, bind=False, poll=False)
    (resumed, *resent) = await client.step([f"<resume xmlns='{SM}' previd='{previd}' h='0'/>"])
    assert local(resumed) == "resumed", etree.tostring(resumed)
    client.start_polling()
    return [element for element in resent if local(element) == "message"]


def bodies(messages: list[etree._Element]) -> list[str | None]:
    return [element.findtext(f"{{{CLIENT}}}body") for element in messages]


async def test_a_new_bosh_session_resumes_and_the_old_one_learns_it_was_replaced(
    server: Server, clients: Clients, new_client: NewClient
) -> None:
    first = await bosh_login(clients, new_client, "alice")
    previd = await enable_resumption(first)
    bob = await clients.login(await clients.user("bob"))
    await befriend(server, "alice@localhost", "bob@localhost")
    bob.send_message(mto=JID(first.jid), mbody="before", mtype="chat")
    await first.recv(is_message("before"))  # received but never acknowledged

    second = new_client()
    assert bodies(await resume(second, previd)) == ["before"]  # h=0: resent
    with pytest.raises(Terminated) as ended:  # the first session's held request brings the news
        await first.recv(lambda _e: False, timeout=5)
    assert ended.value.terminal.get("condition") == "remote-stream-error"
    conflict = f"{{{STREAM}}}error/{{urn:ietf:params:xml:ns:xmpp-streams}}conflict"
    assert ended.value.terminal.find(conflict) is not None
    bob.send_message(mto=JID(first.jid), mbody="after", mtype="chat")
    await second.recv(is_message("after"))


async def test_an_inactive_bosh_session_detaches_and_a_new_one_resumes_it(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = make_config(tmp_path, bosh={"max_inactivity": 1, "max_wait": 1})
    async with started_server(config) as server, endpoint(server) as url:
        pool = Clients(server)
        try:
            await pool.user("alice")
            bob = await pool.login(await pool.user("bob"))
            await befriend(server, "alice@localhost", "bob@localhost")
            first = BoshClient(http, url)
            await first.login("alice", PASSWORD, "web")
            previd = await enable_resumption(first)
            await first.stop()  # the browser tab is gone: no more requests
            await wait_for(lambda: any(session.detached for session in server.connections), 10)
            bob.send_message(mto=JID(first.jid), mbody="while away", mtype="chat")
            second = BoshClient(http, url)
            resent = await resume(second, previd)
            while "while away" not in bodies(resent):
                resent.append(await second.recv(lambda e: local(e) == "message"))
            await second.terminate()
        finally:
            await pool.close_all()
