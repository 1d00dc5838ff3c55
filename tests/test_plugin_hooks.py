"""Hooks over the link: filters answering pass / drop / replace in priority order, filters that never
answer, answer garbage or answer late (fail-open and fail-closed), observers (stanzas, login, logout,
roster), the observe queue's bound, and a plugin flooding the core."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import slixmpp
from conftest import Clients, read_until, started_server, wait_for
from plugin_helpers import SECRET, filter_ids, plugins_config, raw_authenticated, raw_hooks
from prometheus_client import generate_latest
from slixmpp import JID

from nitro.sdk import Drop, Observed, Pass, Plugin, Replace, Verdict, settings_from_config
from nitro.server import Server

A, B = "a.localhost", "b.localhost"


def entry(subdomain: str, **keys: Any) -> dict[str, Any]:
    return {"mode": "external", "subdomain": subdomain, "secret": SECRET, **keys}


def condition(message: slixmpp.Message) -> str | None:
    """The stanza error condition, read from the XML (slixmpp knows only RFC 3920's conditions)."""
    error = message.xml.find("{jabber:client}error")
    found = [] if error is None else [c.tag.split("}")[1] for c in error if not c.tag.endswith("}text")]
    return found[0] if found else None


def messages(client: slixmpp.ClientXMPP) -> list[slixmpp.Message]:
    received: list[slixmpp.Message] = []

    def on_message(message: slixmpp.Message) -> None:
        if message["type"] != "error":
            received.append(message)

    client.add_event_handler("message", on_message)
    client.add_event_handler("message_error", received.append)
    return received


@contextlib.asynccontextmanager
async def running(server: Server, plugin: Plugin, name: str) -> AsyncIterator[None]:
    """Run an SDK plugin against the server until the block ends."""
    assert server.bridge is not None
    settings = dataclasses.replace(settings_from_config(server.config, name), core_port=server.bridge.port)
    task = asyncio.create_task(plugin.main(settings))
    host = server.bridge.plugins[name]
    hooks = server.bridge.hooks.plugins[host.domain]
    try:
        await wait_for(lambda: host.connected and bool(hooks.filters or hooks.observes), 10)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def two_users(clients: Clients) -> tuple[slixmpp.ClientXMPP, slixmpp.ClientXMPP]:
    alice = await clients.login(await clients.user("alice"))
    bob = await clients.login(await clients.user("bob"))
    return alice, bob


def send(client: slixmpp.ClientXMPP, body: str, to: str = "bob@localhost") -> None:
    client.send_message(mto=JID(to), mbody=body, mtype="chat")


async def test_filters_pass_drop_and_replace_in_priority_order(tmp_path: Path) -> None:
    config = plugins_config(tmp_path, {"a": entry(A, priority=10), "b": entry(B, priority=5)})
    first, second = Plugin("a"), Plugin("b")

    def appending(tag: str) -> Callable[[ET.Element], Any]:
        async def handler(stanza: ET.Element) -> Verdict:
            body = stanza.find("{jabber:client}body")
            if body is None:
                return Pass()
            if "forbidden" in (body.text or ""):
                return Drop("policy-violation", "not here")
            body.text = f"{body.text}+{tag}"
            return Replace(stanza)

        return handler

    first.filter("message")(appending("a"))
    second.filter("message")(appending("b"))
    async with started_server(config) as server:
        clients = Clients(server)
        try:
            async with running(server, first, "a"), running(server, second, "b"):
                alice, bob = await two_users(clients)
                to_alice, to_bob = messages(alice), messages(bob)
                send(alice, "hi")
                send(alice, "forbidden words")
                await wait_for(lambda: len(to_bob) == 1 and len(to_alice) == 1)
                assert to_bob[0]["body"] == "hi+a+b"  # a (priority 10) first, then b
                assert to_alice[0]["type"] == "error"
                assert condition(to_alice[0]) == "policy-violation"  # RFC 6120's, unknown to slixmpp
                assert to_alice[0]["error"]["text"] == "not here"
        finally:
            await clients.close_all()


async def test_observers_see_stanzas_and_session_events(tmp_path: Path) -> None:
    config = plugins_config(tmp_path, {"a": entry(A)})
    observer = Plugin("a")
    seen: list[Observed] = []
    for event in ("message", "login", "logout", "roster"):
        observer.observe(event)(_appender(seen))
    async with started_server(config) as server:
        clients = Clients(server)
        try:
            async with running(server, observer, "a"):
                alice, _bob = await two_users(clients)
                send(alice, "observed")
                await wait_for(lambda: any(e.name == "message" for e in seen))
                copy = next(e for e in seen if e.name == "message").stanza
                assert copy is not None
                assert copy.findtext("{jabber:client}body") == "observed"
                await alice.plugin["xep_0030"].get_info(jid=JID("localhost"), timeout=5)  # not observed (iq)
                alice.update_roster(JID("carol@localhost"), name="Carol")
                await wait_for(lambda: any(e.name == "roster" for e in seen))
                roster = next(e for e in seen if e.name == "roster").attributes
                assert roster == {"user": "alice", "jid": "carol@localhost", "subscription": "none"}
                logins = {e.attributes["jid"].split("/")[0] for e in seen if e.name == "login"}
                assert logins == {"alice@localhost", "bob@localhost"}
                await clients.close_all()
                await wait_for(lambda: sum(e.name == "logout" for e in seen) == 2)
                assert {e.name for e in seen} == {"message", "login", "logout", "roster"}
        finally:
            await clients.close_all()


def _appender(seen: list[Observed]) -> Callable[[Observed], Any]:
    async def handler(event: Observed) -> None:
        seen.append(event)

    return handler


@pytest.mark.parametrize("policy", ["open", "closed"])
@pytest.mark.parametrize("answer", ["never", "garbage", "late", "error"])
async def test_a_broken_filter_fails_by_policy(tmp_path: Path, policy: str, answer: str) -> None:
    config = plugins_config(tmp_path, {"a": entry(A, filter_timeout=0.3, failure_policy=policy)})
    async with started_server(config) as server:
        assert server.bridge is not None
        clients = Clients(server)
        try:
            reader, writer = await raw_hooks(server.bridge.port, [("message", "filter")], A)
            alice, bob = await two_users(clients)
            to_alice, to_bob = messages(alice), messages(bob)
            send(alice, "hello")
            data = await read_until(reader, b"</iq>")
            (request,) = filter_ids(data)
            replies = {
                "garbage": f"<iq type='result' id='{request}' to='localhost' from='{A}'>"
                "<verdict xmlns='urn:nitro:plugin:hooks:0' action='maybe'/></iq>",
                "error": f"<iq type='error' id='{request}' to='localhost' from='{A}'><error type='cancel'>"
                "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
                "late": f"<iq type='result' id='{request}' to='localhost' from='{A}'>"
                "<verdict xmlns='urn:nitro:plugin:hooks:0' action='drop'/></iq>",
            }
            if answer == "late":
                await asyncio.sleep(0.6)
            if answer in replies:
                writer.write(replies[answer].encode())
            if policy == "open":
                await wait_for(lambda: len(to_bob) == 1)
                assert to_bob[0]["body"] == "hello"
                assert to_alice == []
            else:
                await wait_for(lambda: len(to_alice) == 1)
                assert to_alice[0]["error"]["condition"] == "internal-server-error"
                assert to_alice[0]["error"]["type"] == "wait"
                assert to_bob == []
            # the link survives a broken answer: the next message is filtered again
            send(alice, "again")
            more = await read_until(reader, b"again")
            assert len(filter_ids(more)) == 1
            assert server.bridge.plugins["a"].connected
            writer.close()
        finally:
            await clients.close_all()


async def test_a_down_plugin_fails_by_policy_and_its_observe_queue_is_bounded(tmp_path: Path) -> None:
    config = plugins_config(tmp_path, {"a": entry(A, failure_policy="closed", observe_queue=2)})
    async with started_server(config) as server:
        assert server.bridge is not None
        clients = Clients(server)
        try:
            _reader, writer = await raw_hooks(server.bridge.port, [("message", "observe")], A)
            writer.close()
            await wait_for(lambda: server.bridge is not None and not server.bridge.plugins["a"].connected)
            alice, bob = await two_users(clients)
            to_bob = messages(bob)
            for n in range(5):
                send(alice, f"m{n}")
            await wait_for(lambda: len(to_bob) == 5)  # observing holds nothing up
            hooks = server.bridge.hooks.plugins[A]
            assert (len(hooks.queue), hooks.dropped) == (2, 3)
            scrape = generate_latest(server.metrics.registry).decode()
            assert 'nitro_plugin_observe_dropped_total{plugin="a"} 3.0' in scrape
            reader, writer, data = await raw_authenticated(server.bridge.port, A)
            if b"m1" not in data:  # the held events follow the handshake, maybe in the same read
                data += await read_until(reader, b"m1")
            assert b"m0" in data
            assert b"m2" not in data
            writer.close()
        finally:
            await clients.close_all()


async def test_a_flooding_plugin_is_held_to_its_rate(tmp_path: Path) -> None:
    rate = 100.0
    config = plugins_config(tmp_path, {"a": entry(A)}, stanzas_per_second=rate)
    async with started_server(config) as server:
        assert server.bridge is not None
        clients = Clients(server)
        try:
            alice, bob = await two_users(clients)
            to_bob = messages(bob)
            _reader, writer, _answer = await raw_authenticated(server.bridge.port, A)
            flood = b"".join(
                f"<message from='x@{A}' to='bob@localhost' type='chat'><body>{n}</body></message>".encode()
                for n in range(3000)
            )
            writer.write(flood)
            started = time.monotonic()
            await asyncio.sleep(1.0)
            elapsed = time.monotonic() - started
            link = next(iter(server.bridge.links))
            assert link.routed <= rate * elapsed + rate + 1  # the bucket: one second's burst, then the rate
            # the core is not held up: a client's ping to the server is answered meanwhile
            await alice.plugin["xep_0199"].ping(JID("localhost"), timeout=5)
            assert len(to_bob) <= link.routed
            writer.close()
        finally:
            await clients.close_all()
