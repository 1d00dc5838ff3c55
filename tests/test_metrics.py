"""The /metrics endpoint of a real server, scraped over HTTP while real clients log in and talk."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import slixmpp
from conftest import Clients, make_config, wait_for
from prometheus_client.parser import text_string_to_metric_families
from test_c2s import opened
from test_stream_management import authenticated, login_collecting, managed

from nitro.config import ConfigError, parse_config
from nitro.server import Server, running_server
from nitro.storage.errors import AlreadyExists
from nitro.storage.timed import TimedRepository, timed_storage

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Scrape:
    """One scrape, parsed: `scrape("nitro_stanzas_received_total", kind="message")` is a sample's value."""

    samples: Mapping[tuple[str, Labels], float]

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def names(self) -> set[str]:
        return {name for name, _labels in self.samples}


async def fetch(
    server: Server, path: str = "/metrics", headers: Mapping[str, str] | None = None
) -> tuple[int, str]:
    endpoint = server.metrics_endpoint
    assert endpoint is not None
    url = f"http://{endpoint.host}:{endpoint.port}{path}"
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        return response.status, await response.text()


async def scrape(server: Server, token: str | None = None) -> Scrape:
    status, text = await fetch(server, headers={"Authorization": f"Bearer {token}"} if token else None)
    assert status == 200, text
    samples: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(samples)


async def settled(*clients: slixmpp.ClientXMPP) -> None:
    """A ping round trip per client: the server handles a stream's stanzas in order, so everything the
    client sent before (initial presence, and the offline delivery it starts) has been handled."""
    for client in clients:
        await client.plugin["xep_0199"].ping(timeout=5)


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after(name, **labels) - before(name, **labels)


async def test_the_endpoint_is_on_loopback_with_every_metric_family(server: Server) -> None:
    endpoint = server.metrics_endpoint
    assert endpoint is not None
    assert endpoint.host == "127.0.0.1"
    assert endpoint.port > 0
    status, text = await fetch(server)
    assert status == 200
    families = {family.name for family in text_string_to_metric_families(text)}
    assert {
        "nitro_c2s_sessions",
        "nitro_c2s_connections",
        "nitro_c2s_connections_accepted",
        "nitro_stanzas_received",
        "nitro_stanzas_sent",
        "nitro_routing_seconds",
        "nitro_storage_seconds",
        "nitro_storage_tier_hits",
        "nitro_storage_tier_misses",
        "nitro_offline_messages_stored",
        "nitro_offline_messages_delivered",
        "nitro_offline_queue_length",
        "nitro_event_loop_lag_seconds",
        "nitro_event_loop_lag_max_seconds",
        "nitro_gc_collections",
        "nitro_gc_collected_objects",
        "nitro_gc_uncollectable_objects",
        "nitro_gc_pause_seconds",
        "process_resident_memory_bytes",
        "process_cpu_seconds",
    } <= families
    first = await scrape(server)
    assert first("nitro_routing_seconds_bucket", le="5e-05") == 0  # the finest bucket is 50 µs


async def test_sessions_are_counted_by_state(server: Server, clients: Clients) -> None:
    for name in ("alice", "carol", "dave"):
        await clients.user(name)
    before = await scrape(server)
    _reader, negotiating = await opened(server)
    not_bound = await authenticated(server, "carol")
    await clients.login("alice@localhost")
    detaching, _previd = await managed(server, "dave")
    detaching.abort()
    await wait_for(lambda: any(session.detached for session in server.connections))
    after = await scrape(server)
    assert after("nitro_c2s_sessions", state="negotiating") == 1
    assert after("nitro_c2s_sessions", state="authenticated") == 1
    assert after("nitro_c2s_sessions", state="bound") == 1
    assert after("nitro_c2s_sessions", state="resumable") == 1
    assert after("nitro_c2s_connections") == 3  # the detached session has no connection
    assert delta(before, after, "nitro_c2s_connections_accepted_total") == 4
    negotiating.close()
    not_bound.writer.close()
    await wait_for(lambda: sum(1 for session in server.connections if not session.detached) == 1)
    final = await scrape(server)
    assert final("nitro_c2s_sessions", state="negotiating") == 0
    assert final("nitro_c2s_sessions", state="authenticated") == 0
    assert final("nitro_c2s_connections") == 1


async def test_stanzas_in_and_out_by_kind_and_routing_latency(server: Server, clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"))
    bob = await clients.login(await clients.user("bob"))
    received: list[str] = []
    bob.add_event_handler("message", lambda message: received.append(message["body"]))
    await settled(alice, bob)
    before = await scrape(server)
    for n in range(3):
        alice.send_message(mto=slixmpp.JID("bob@localhost"), mbody=f"hello {n}", mtype="chat")
    await wait_for(lambda: len(received) == 3)
    await settled(alice)  # her messages' routing (archiving included) has finished: one more iq each way
    after = await scrape(server)
    assert delta(before, after, "nitro_stanzas_received_total", kind="message") == 3
    assert delta(before, after, "nitro_stanzas_sent_total", kind="message") == 3
    assert delta(before, after, "nitro_stanzas_received_total", kind="presence") == 0
    assert delta(before, after, "nitro_routing_seconds_count") == 4  # three messages, one ping
    assert delta(before, after, "nitro_routing_seconds_sum") > 0
    assert after("nitro_routing_seconds_bucket", le="+Inf") == after("nitro_routing_seconds_count")


async def test_a_roster_request_is_one_iq_each_way_and_timed_storage_calls(
    server: Server, clients: Clients
) -> None:
    alice = await clients.login(await clients.user("alice"))
    await settled(alice)
    before = await scrape(server)
    await alice.get_roster()
    await settled(alice)
    after = await scrape(server)
    assert delta(before, after, "nitro_stanzas_received_total", kind="iq") == 2  # the roster get, a ping
    assert delta(before, after, "nitro_stanzas_sent_total", kind="iq") == 2
    # Read once: from SQL through the timing proxy, or from the in-process cache that the login's presence
    # filled (on SQLite nothing committed since, so it is served: tests/test_sqlite_cache.py).
    sql = delta(before, after, "nitro_storage_seconds_count", repository="rosters", operation="get")
    cached = delta(before, after, "nitro_storage_tier_hits_total", tier="cache", kind="roster")
    assert sql + cached == 1
    assert after("nitro_storage_seconds_count", repository="rosters", operation="get") >= 1
    # The login itself read the credentials once, through the timing proxy.
    assert after("nitro_storage_seconds_count", repository="accounts", operation="get_credentials") == 1


async def test_offline_messages_are_counted_and_the_queue_measured_at_login(
    server: Server, clients: Clients
) -> None:
    alice = await clients.login(await clients.user("alice"))
    bob_jid = await clients.user("bob")
    await settled(alice)
    before = await scrape(server)
    for n in range(2):
        alice.send_message(mto=slixmpp.JID(bob_jid), mbody=f"while you were out {n}", mtype="chat")
    await wait_for(lambda: server.metrics.offline_stored == before("nitro_offline_messages_stored_total") + 2)
    received = await login_collecting(clients, bob_jid)
    await wait_for(lambda: len(received) == 2)
    after = await scrape(server)
    assert delta(before, after, "nitro_offline_messages_stored_total") == 2
    assert delta(before, after, "nitro_offline_messages_delivered_total") == 2
    assert delta(before, after, "nitro_offline_queue_length_count") == 1  # bob's login
    assert delta(before, after, "nitro_offline_queue_length_sum") == 2
    assert delta(before, after, "nitro_offline_queue_length_bucket", le="1.0") == 0
    assert delta(before, after, "nitro_offline_queue_length_bucket", le="5.0") == 1


async def test_garbage_collections_are_counted_per_generation(server: Server) -> None:
    before = await scrape(server)
    for _ in range(20):
        cycle: list[object] = []
        cycle.append(cycle)
    del cycle
    gc.collect()
    after = await scrape(server)
    assert delta(before, after, "nitro_gc_collections_total", generation="2") >= 1
    assert delta(before, after, "nitro_gc_pause_seconds_count", generation="2") >= 1
    assert delta(before, after, "nitro_gc_pause_seconds_sum", generation="2") > 0
    freed = sum(
        delta(before, after, "nitro_gc_collected_objects_total", generation=generation)
        for generation in ("0", "1", "2")
    )
    assert freed >= 20  # the cycles (a young collection may have found some before gc.collect)
    for generation in ("0", "1", "2"):
        assert after("nitro_gc_uncollectable_objects_total", generation=generation) >= 0


async def test_event_loop_lag_is_observed(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path, metrics={"port": 0, "lag_interval": 0.05})) as server:
        await asyncio.sleep(0.2)
        before = await scrape(server)
        assert before("nitro_event_loop_lag_seconds_count") >= 1
        time.sleep(0.2)  # noqa: ASYNC251 - blocking the loop on purpose: the lag the probe must see
        await asyncio.sleep(0.2)
        after = await scrape(server)
    slow = delta(before, after, "nitro_event_loop_lag_seconds_count") - delta(
        before, after, "nitro_event_loop_lag_seconds_bucket", le="0.1"
    )
    assert slow >= 1  # at least one probe woke more than 100 ms late
    assert after("nitro_event_loop_lag_max_seconds") >= 0.1


async def test_storage_tier_sources_are_read_at_scrape_time(server: Server) -> None:
    hits = {"roster": (5, 2)}
    remove = server.metrics.add_tier_source("test-cache", lambda: hits)

    def broken() -> dict[str, tuple[int, int]]:
        raise RuntimeError("ring unreachable")

    server.metrics.add_tier_source("test-ring", broken)
    first = await scrape(server)
    assert first("nitro_storage_tier_hits_total", tier="test-cache", kind="roster") == 5
    assert first("nitro_storage_tier_misses_total", tier="test-cache", kind="roster") == 2
    assert not any(
        name.startswith("nitro_storage_tier") and ("tier", "test-ring") in labels
        for name, labels in first.samples
    )
    hits["roster"] = (7, 3)
    second = await scrape(server)
    assert second("nitro_storage_tier_hits_total", tier="test-cache", kind="roster") == 7
    remove()
    third = await scrape(server)
    assert (
        "nitro_storage_tier_hits_total",
        frozenset({("tier", "test-cache"), ("kind", "roster")}),
    ) not in third.samples


async def test_a_token_is_required_when_set(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path, metrics={"port": 0, "token": "s3cret"})) as server:
        status, _text = await fetch(server)
        assert status == 401
        for header in (
            "Bearer wrong",
            "Basic czNjcmV0",
            "Bearer",
            "Bearer s3cret extra",
            "s3cret",
            "Bearer s3cre",
        ):
            status, _text = await fetch(server, headers={"Authorization": header})
            assert status == 401, header
        assert (await scrape(server, token="s3cret"))("nitro_c2s_connections") == 0
        status, _text = await fetch(server, path="/nope", headers={"Authorization": "Bearer s3cret"})
        assert status == 404


async def test_the_challenge_names_the_bearer_scheme(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path, metrics={"port": 0, "token": "s3cret"})) as server:
        endpoint = server.metrics_endpoint
        assert endpoint is not None
        async with aiohttp.ClientSession() as http:
            async with http.get(endpoint.url) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.post(endpoint.url, headers={"Authorization": "Bearer s3cret"}) as response:
                assert response.status == 405


async def test_unknown_paths_are_404(server: Server) -> None:
    for path in ("/", "/metricsx", "/metrics/extra"):
        status, _text = await fetch(server, path=path)
        assert status == 404, path


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"host": "0.0.0.0"}, "not a loopback address: set [metrics].token"),  # noqa: S104 - refused
        ({"host": "192.0.2.1"}, "not a loopback address"),
        ({"host": "metrics.example.com"}, "not a loopback address"),
        ({"port": 70000}, "[metrics].port must be between 0 and 65535"),
        ({"port": -1}, "[metrics].port must be between 0 and 65535"),
        ({"lag_interval": 0}, "[metrics].lag_interval must be positive"),
        ({"token": 5}, "[metrics].token: expected str"),
        ({"bind": "x"}, "unknown key 'bind'"),
    ],
)
def test_bad_metrics_config_is_refused(metrics: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config({"metrics": metrics})


@pytest.mark.parametrize(
    "metrics",
    [
        {"host": "0.0.0.0", "token": "s3cret"},  # noqa: S104 - a config value, never bound here
        {"host": "0.0.0.0", "enabled": False},  # noqa: S104
        {"host": "::1"},
        {"host": "127.0.0.2"},
        {"host": "localhost"},
    ],
)
def test_loopback_or_a_token_is_accepted(metrics: dict[str, object]) -> None:
    parse_config({"metrics": metrics})


async def test_disabled_metrics_bind_nothing_and_time_nothing(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path, metrics={"enabled": False})) as server:
        assert server.metrics_endpoint is None
        assert not isinstance(server.storage.accounts, TimedRepository)
        assert server.metrics._on_gc not in gc.callbacks


async def test_each_server_has_its_own_registry(tmp_path: Path, clients: Clients, server: Server) -> None:
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    async with running_server(make_config(other_dir)) as other:
        assert server.metrics._on_gc in gc.callbacks
        assert other.metrics._on_gc in gc.callbacks
        await clients.login(await clients.user("alice"))
        mine, theirs = await scrape(server), await scrape(other)
        assert mine("nitro_c2s_sessions", state="bound") == 1
        assert theirs("nitro_c2s_sessions", state="bound") == 0
        assert theirs("nitro_stanzas_received_total", kind="presence") == 0
    assert other.metrics._on_gc not in gc.callbacks  # stopped with its server


async def test_the_timing_proxy_covers_every_repository_and_failures(server: Server) -> None:
    calls: list[tuple[str, str]] = []
    timed = timed_storage(
        server.storage, lambda repository, operation, _seconds: calls.append((repository, operation))
    )
    for name in (
        "accounts",
        "rosters",
        "offline",
        "archive",
        "pep",
        "blocklist",
        "vcards",
        "private",
        "last",
    ):
        assert isinstance(getattr(timed, name), TimedRepository), name
    assert await timed.accounts.exists("nobody") is False
    await timed.accounts.create("alice", {})
    with pytest.raises(AlreadyExists):
        await timed.accounts.create("alice", {})
    assert calls[-3:] == [("accounts", "exists"), ("accounts", "create"), ("accounts", "create")]


async def test_a_metrics_port_in_use_stops_the_start(tmp_path: Path, server: Server) -> None:
    endpoint = server.metrics_endpoint
    assert endpoint is not None
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    with pytest.raises(OSError, match="address already in use"):
        async with running_server(make_config(other_dir, metrics={"port": endpoint.port})):
            pass
    assert (await scrape(server))("nitro_c2s_connections") == 0  # the first server is unharmed
