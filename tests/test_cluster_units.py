"""The cluster's pure parts: the receiver drops a retried stanza id, the mirror of other nodes' resources
follows announcements and snapshots, wire records round-trip."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from nitro.cluster.forward import Receiver
from nitro.cluster.view import RemoteView
from nitro.cluster.wire import Announced, WireError, decode
from nitro.cluster.workers import worker_config, worker_count
from nitro.config import ConfigError, parse_config
from nitro.xmpp.jid import JID

PRESENCE = '<presence xmlns="jabber:client" from="bob@localhost/laptop"><priority>5</priority></presence>'


def test_a_retried_stanza_id_is_delivered_once() -> None:
    delivered: list[tuple[str, str]] = []

    def deliver(to: JID, xml: str) -> bool:
        if to.resource == "gone":
            return False
        delivered.append((str(to), xml))
        return True

    receiver = Receiver(deliver)
    batch = [["a/1/1", "bob@localhost/laptop", "<message/>"], ["a/1/2", "bob@localhost/gone", "<message/>"]]
    assert receiver.handle(batch) == ["ok", "gone"]
    assert receiver.handle(batch) == ["ok", "gone"]  # the retry: acknowledged, not delivered again
    assert delivered == [("bob@localhost/laptop", "<message/>")]
    assert receiver.duplicates == 1
    assert receiver.handle([["x"], ["a/1/3", "not a jid@@", "<m/>"]]) == ["bad", "bad"]
    with pytest.raises(WireError):
        receiver.handle("not a list")


def test_an_upgrade_s_two_receivers_deliver_each_stanza_once() -> None:
    """The old process records what it answers; the successor, told those ids, answers the rest of what it
    held (including a "gone" the old one answered: never a second attempt after the sender fell back)."""
    old_delivered: list[str] = []
    new_delivered: list[str] = []

    def into(delivered: list[str], gone: str) -> Callable[[JID, str], bool]:
        def deliver(to: JID, xml: str) -> bool:
            if to.resource == gone:
                return False
            delivered.append(xml)
            return True

        return deliver

    old = Receiver(into(old_delivered, "gone"))
    new = Receiver(into(new_delivered, ""))  # bound on the successor meanwhile: it would take it
    old.record = set()
    first = [["a/1/1", "bob@localhost/laptop", "<m1/>"], ["a/1/2", "bob@localhost/gone", "<m2/>"]]
    assert old.handle(first) == ["ok", "gone"]
    held = [first, [["a/1/3", "bob@localhost/laptop", "<m3/>"]]]  # the successor heard both batches
    new.answered_elsewhere(sorted(old.record))
    assert [new.handle(batch) for batch in held] == [["ok", "ok"], ["ok"]]
    assert old_delivered == ["<m1/>"]
    assert new_delivered == ["<m3/>"]


def test_the_view_follows_announcements_snapshots_and_node_loss() -> None:
    view = RemoteView("a")
    record = Announced("bob@localhost/laptop", 5, ("carbons",), PRESENCE)
    view.put("b", Announced.from_json(record.to_json()))
    view.put("a", Announced("bob@localhost/own", 0, (), None))  # our own: never mirrored
    (resource,) = view.resources(JID.parse("bob@localhost"))
    assert (resource.node, resource.priority, resource.available, resource.has("carbons")) == (
        "b",
        5,
        True,
        True,
    )
    view.suspect.add("b")
    assert view.resources(JID.parse("bob@localhost")) == []  # left out while b does not answer
    assert view.resource(JID.parse("bob@localhost/laptop")) is None
    view.replace("b", [Announced("bob@localhost/tablet", 0, (), None)])  # b answers again, with this
    assert [str(r.jid) for r in view.resources(JID.parse("bob@localhost"))] == ["bob@localhost/tablet"]
    gone = view.drop_node("b")
    assert [str(r.jid) for r in gone] == ["bob@localhost/tablet"]
    assert view.resources(JID.parse("bob@localhost")) == []
    assert view.nodes() == set()


def test_the_view_applies_announcements_by_kind_and_refuses_malformed_ones() -> None:
    view = RemoteView("a")
    laptop = Announced("bob@localhost/laptop", 0, (), PRESENCE).to_json()
    tablet = Announced("bob@localhost/tablet", 0, (), None).to_json()
    view.apply("b", "snapshot", {"part": 0, "items": [laptop]})
    view.apply("b", "snapshot", {"part": 1, "items": [tablet]})  # later parts add to the first
    assert sorted(str(r.jid) for r in view.held_by("b")) == ["bob@localhost/laptop", "bob@localhost/tablet"]
    view.apply("b", "del", {"jid": "bob@localhost/laptop"})
    view.apply("b", "snapshot", {"part": 0, "items": [tablet]})  # a first part replaces what b held
    assert [str(r.jid) for r in view.held_by("b")] == ["bob@localhost/tablet"]
    view.apply("b", "someday", {})  # a kind this node does not know is ignored
    with pytest.raises(KeyError):
        view.apply("b", "put", {})
    with pytest.raises(WireError):
        view.apply("b", "put", {"r": ["only", "three", "fields"]})
    assert [str(r.jid) for r in view.held_by("b")] == ["bob@localhost/tablet"]
    view.apply("b", "down", {})
    assert view.nodes() == set()


def test_garbage_on_the_wire_is_a_wire_error() -> None:
    for data in (b"not json", b"[1, 2]"):
        with pytest.raises(WireError):
            decode(data)
    with pytest.raises(WireError):
        Announced.from_json(["only", "three", "fields"])


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ({"cluster": {"node": "a"}}, r"\[cluster\] needs the Redis ring"),
        (
            {"cluster": {"node": "a b"}, "redis": {"instances": ["redis://127.0.0.1:1/0"]}},
            r"\[cluster\]\.node must",
        ),
        (
            {"cluster": {"node": "a", "heartbeat_ttl": 0}, "redis": {"instances": ["redis://x:1/0"]}},
            "positive",
        ),
        ({"server": {"workers": 0}}, r"\[server\]\.workers must be at least 1"),
        ({"server": {"workers": "many"}}, r"\[server\]\.workers must be at least 1 or \"auto\""),
        ({"server": {"workers": 2}}, r"set \[cluster\]\.node"),
        (
            {
                "cluster": {"node": "a", "nats_user": "u", "nats_token": "t"},
                "redis": {"instances": ["redis://x:1/0"]},
            },
            "use one of",
        ),
    ],
)
def test_cluster_settings_that_cannot_work_are_start_up_errors(document: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_config(document)


def test_workers_auto_with_a_node_name_is_accepted() -> None:
    config = parse_config(
        {"server": {"workers": "auto"}, "cluster": {"node": "a"}, "redis": {"instances": ["redis://x:1/0"]}}
    )
    assert worker_count(config) >= 1
    second = worker_config(config, 1)
    assert (second.cluster.node, second.admin.pid_file) == ("a-w1", "")
