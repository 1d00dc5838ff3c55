"""The cluster's pure parts: the receiver drops a retried stanza id, the mirror of other nodes' resources
follows announcements and snapshots, wire records round-trip."""

from __future__ import annotations

import pytest

from nitro.cluster.forward import Receiver
from nitro.cluster.view import RemoteView
from nitro.cluster.wire import Announced, WireError, decode
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


def test_garbage_on_the_wire_is_a_wire_error() -> None:
    for data in (b"not json", b"[1, 2]"):
        with pytest.raises(WireError):
            decode(data)
    with pytest.raises(WireError):
        Announced.from_json(["only", "three", "fields"])
