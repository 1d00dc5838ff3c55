"""A BOSH session's binding state exported and restored (an upgrade moves it to the successor process):
transcripts of requests before and after the move, no I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_bosh_session import RID, STANZA, answered, attributes, kinds, message, ready, receive, request

from nitro.xmpp.bosh_session import BoshSession, Settings
from nitro.xmpp.bosh_state import export_state, movable, restore_state


def moved(session: BoshSession, now: float = 100.0) -> BoshSession:
    """Through JSON, as over the upgrade socket, into a process whose clock reads `now`."""
    return restore_state(json.loads(json.dumps(export_state(session))), Settings(), "localhost", now)


def test_the_next_request_goes_on_after_the_move_and_a_lost_response_is_sent_again() -> None:
    session = ready()
    receive(session, 2, request(RID + 1))  # a long poll, held
    session.send(STANZA)
    (before,) = session.flush(0.0)  # answered with the stanza
    receive(session, 3, request(RID + 2))  # the next poll, held when the upgrade comes
    session.release(1.0)  # answered empty, as on 'wait' expiry
    (released,) = session.flush(1.0)
    assert released.handle == 3
    assert len(answered([released])[3]) == 0
    session.send(message("queued"))  # written after the last response: it travels with the state
    assert movable(session)

    successor = moved(session)

    assert successor.sid == session.sid
    # §14.3: a response lost on the old process's connection is sent again by the successor, byte for byte
    receive(successor, 10, request(RID + 1))
    (again,) = successor.flush(100.0)
    assert again.body == before.body
    # the next rid is accepted, and what was queued goes out in its response
    assert kinds(receive(successor, 11, request(RID + 3, content=message("sent")))) == ["messagesent"]
    (reply,) = successor.flush(100.0)
    body = answered([reply])[11]
    assert [child.findtext("{*}body") for child in body] == ["queued"]
    assert not successor.terminated


def test_the_window_and_the_parameters_move_with_it() -> None:
    session = ready(attrs={"wait": "20", "hold": "1", "ack": "1"})
    successor = moved(session)
    assert (successor.wait, successor.hold, successor.requests) == (20, 1, 2)
    receive(successor, 2, request(RID + 5))  # beyond the window (requests = 2): item-not-found, as before
    (reply,) = successor.flush(100.0)
    assert attributes(answered([reply])[2])["condition"] == "item-not-found"


def test_a_session_taken_back_from_a_dead_successor_accepts_the_clients_next_rid() -> None:
    """The successor answered rids the old process never saw; taken back, the old process goes on from the
    client's next rid, even past the window it exported, once; then the window holds again."""
    session = ready()
    state = json.loads(json.dumps(export_state(session)))
    taken_back = restore_state({**state, "rids_unknown": True}, Settings(), "localhost", 100.0)
    assert kinds(receive(taken_back, 2, request(RID + 4, content=message("back")))) == ["messageback"]
    assert not taken_back.terminated
    receive(taken_back, 3, request(RID + 9))  # beyond the window again: item-not-found, as before
    replies = answered(taken_back.flush(100.0))
    assert attributes(replies[3])["condition"] == "item-not-found"


def test_the_clocks_restart_in_the_successor() -> None:
    session = ready(now=5.0)
    successor = moved(session, now=1000.0)
    assert not successor.inactive(1000.0 + 59)  # 'inactivity' (60 s) counts from the move
    assert successor.inactive(1000.0 + 61)


def test_a_request_waiting_for_a_gap_or_being_handled_is_not_movable() -> None:
    session = ready()
    receive(session, 2, request(RID + 2))  # RID + 1 has not come: this one waits
    assert not movable(session)
    receive(session, 3, request(RID + 1))
    assert movable(session)
    session.processing = True
    assert not movable(session)


def test_held_requests_must_be_released_before_export() -> None:
    session = ready()
    receive(session, 2, request(RID + 1))
    with pytest.raises(AssertionError):
        export_state(session)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data.pop("sid"),
        lambda data: data.update(sid=7),
        lambda data: data.update(next_rid=0),
        lambda data: data.update(cache=[[1, 2]]),
        lambda data: data.update(version=["x", "y"]),
        lambda data: data["opened"].update(to=["not", "text"]),
    ],
)
def test_damaged_state_is_refused(damage: Any) -> None:
    data = json.loads(json.dumps(export_state(ready())))
    damage(data)
    with pytest.raises((KeyError, TypeError, ValueError)):
        restore_state(data, Settings(), "localhost", 0.0)
