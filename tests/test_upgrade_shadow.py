"""The old process of an upgrade SIGKILLed mid-drain: the successor adopts from its shadow copies what was
still there (real `nitro serve` processes, raw XMPP streams with stream management); stanzas forwarded
ahead of their session wait for it (a real server; the test speaks the old process's side of the socket)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from upgrade_node import Node, bodies, message, node, resume, upgrade_section

from nitro.c2s.inputs import State
from nitro.c2s.session import ClientSession
from nitro.c2s.transport import NO_TRANSPORT
from nitro.ops.handover import Channel
from nitro.ops.shadow_copies import ShadowCopies
from nitro.ops.successor import Predecessor
from nitro.server import Server
from nitro.storage.layered import open_storage
from nitro.storage.models import RosterItem
from nitro.xmpp.jid import JID
from nitro.xmpp.sm import HandledCountTooHigh, SmState

ALICE, CAROL, DAVE = "alice@localhost", "carol@localhost", "dave@localhost"
RECIPIENTS = ("r1", "r2", "r3", "r4", "r5")
UNAVAILABLE = re.compile(
    rb"<presence[^>]*alice@localhost/desk[^>]*unavailable|<presence[^>]*unavailable[^>]*alice@localhost/desk"
)


async def befriend(running: Node, a: str, b: str) -> None:
    """Mutual subscription, as the storage holds it after a completed exchange (RFC 6121 §3)."""
    async with open_storage(running.config) as storage:
        await storage.rosters.put(a, RosterItem(f"{b}@localhost", subscription="both"))
        await storage.rosters.put(b, RosterItem(f"{a}@localhost", subscription="both"))


@pytest.mark.slow
@pytest.mark.fault
async def test_sigkill_mid_drain_every_session_left_is_adopted_from_its_shadow(tmp_path: Path) -> None:
    """carol moves first; then the old process is killed with r1…r5 (stream management, resumable) and alice
    (none) still in it: every r resumes on the successor and gets what it had not acknowledged, including
    what was sent after the drain started, exactly once; carol sees alice go unavailable."""
    running = node(tmp_path, upgrade_section(ready_timeout=20.0, drain_rate=1.0, drain_deadline=60.0))
    await running.add_users("alice", "carol", "dave", *RECIPIENTS)
    await befriend(running, "alice", "carol")
    await running.start()
    try:
        carol, carol_id = await running.managed("carol", "pad")  # bound first: moved first
        managed = [await running.managed(name, "phone") for name in RECIPIENTS]
        alice = await running.bound("alice", "desk")  # no stream management; bound last
        carol.send(b"<presence/>")
        alice.send(b"<presence/>")
        await carol.expect(b'from="alice@localhost/desk"')
        for name, (peer, _previd) in zip(RECIPIENTS, managed, strict=True):
            alice.send(message(f"{name}@localhost/phone", f"{name}-1"))
            await peer.expect(f"<body>{name}-1</body>".encode())  # in the first shadow copies, unacked
        upgrade = asyncio.create_task(running.nitro("upgrade"))
        await carol.until_closed(60)  # moved: the drain runs, the copies are in the successor
        for name, (peer, _previd) in zip(RECIPIENTS, managed, strict=True):
            alice.send(message(f"{name}@localhost/phone", f"{name}-2"))
            await peer.expect(f"<body>{name}-2</body>".encode())  # journaled
        managed[0][0].send(b"<a xmlns='urn:xmpp:sm:3' h='1'/>")  # r1 acknowledges its first: journaled too
        await asyncio.sleep(0.2)
        os.kill(running.first_pid, signal.SIGKILL)
        code, _out, _err = await upgrade
        assert code != 0  # the command lost its answer with the process
        successor = await running.wait_for_pid(lambda pid: pid != running.first_pid)
        await running.wait_log("died mid-drain")

        for index, (name, (peer, previd)) in enumerate(zip(RECIPIENTS, managed, strict=True)):
            await peer.until_closed()
            h = {"r1": 1, "r2": 2}.get(name, 0)  # r1 acknowledged its first; r2 says it read both
            expected = {"r1": [f"{name}-2"], "r2": []}.get(name, [f"{name}-1", f"{name}-2"])
            again = await running.authenticated(name)
            again.send(resume(previd, h))
            await again.expect(f'previd="{previd}"'.encode())  # resumed, not a new session
            again.send(b"<r xmlns='urn:xmpp:sm:3'/>")
            answer = await again.expect(b"<a xmlns")  # what is resent is written before this answer
            assert bodies(answer.string[: answer.end()]) == expected, name
            managed[index] = (again, previd)
        carol = await running.authenticated("carol")
        carol.send(resume(carol_id, 0))
        await carol.expect(f'previd="{carol_id}"'.encode())
        await carol.expect(UNAVAILABLE)  # alice went with the old process: an unexpected disconnect

        dave = await running.bound("dave", "x")
        for name, (peer, _previd) in zip(RECIPIENTS, managed, strict=True):
            dave.send(message(f"{name}@localhost/phone", f"{name}-3"))
            got = await peer.expect(f"<body>{name}-3</body>".encode())
            assert bodies(got.string[: got.end()]) == [f"{name}-3"]  # nothing twice
        code, out, _err = await running.nitro("status")
        assert f"pid {successor}" in out
        assert (
            "taking over from the previous generation: gone, 6 of 7 sessions adopted, 1 closed there" in out
        )
        for peer in (carol, dave, alice, *(peer for peer, _ in managed)):
            peer.close()
    finally:
        await running.stop()


def _export(server: Server, jid: str) -> dict[str, Any]:
    """A resumable session as the old process exports it."""
    session = ClientSession(server, NO_TRANSPORT, JID.parse(jid))
    session.sm = SmState.start(resume=True, resume_timeout=60.0)
    session.state = State.ESTABLISHED
    return session.export()


def _stanza(text: str) -> str:
    return message("bob@localhost/phone", text).decode()


async def test_stanzas_forwarded_ahead_of_their_session_wait_for_it_in_order(server: Server) -> None:
    """The old process's forwards for bob/phone reach the successor before bob's `sessions` message: they
    are held, then queued in his adopted session before what came after it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    old = Channel(theirs)
    predecessor = Predecessor(Channel(ours), 2, {}, old_pid=os.getpid())
    serving = asyncio.create_task(predecessor.serve(server))
    try:
        await old.send({"type": "online", "jids": ["bob@localhost/phone", "carol@localhost/pad"]})
        for text in ("early-1", "early-2"):
            await old.send({"type": "deliver", "to": "bob@localhost/phone", "stanza": _stanza(text)})
        await old.send({"type": "sessions", "sessions": [_export(server, "bob@localhost/phone")]})
        await old.send({"type": "deliver", "to": "bob@localhost/phone", "stanza": _stanza("later")})
        answer, _ = await old.receive(5)
        assert answer["type"] == "adopted"
        assert len(answer["ids"]) == 1
        bob = server.sessions.get(JID.parse("bob@localhost/phone"))
        assert isinstance(bob, ClientSession)
        assert bob.sm is not None
        for _ in range(100):
            if len(bob.sm.unacked) == 3:
                break
            await asyncio.sleep(0.02)
        queued = b"".join(etree.tostring(stanza) for stanza in bob.sm.unacked)
        assert bodies(queued) == ["early-1", "early-2", "later"]
        assert predecessor.held is not None
        assert predecessor.held.count == 2
        await old.send({"type": "done", "moved": 1, "closed": 0})
    finally:
        old.close()
        await asyncio.wait_for(serving, 10)


def test_a_journal_keeps_a_copy_equal_to_the_session() -> None:
    """Queued stanzas appended, acknowledged ones dropped from the front, counters and resource replaced."""
    copies = ShadowCopies()
    data: dict[str, Any] = {
        "id": "s1",
        "jid": "bob@localhost/phone",
        "priority": 0,
        "sm": {"unacked": ["<a/>"]},
    }
    assert copies.add([data]) == ["bob@localhost/phone"]
    bound, ended = copies.apply(
        [
            {"op": "sm", "id": "s1", "h_in": 3, "h_out": 4, "queued": 2, "stanzas": ["<b/>", "<c/>", "<d/>"]},
            {"op": "resource", "id": "s1", "resource": {"jid": "x@y/z", "priority": 5}},
            {"op": "sm", "id": "gone", "h_in": 1, "h_out": 1, "queued": 0, "stanzas": []},  # moved: ignored
            {"op": "ended", "id": "s2", "jid": "carol@localhost/pad"},
        ]
    )
    assert (bound, ended) == ([], ["carol@localhost/pad"])
    assert list(data["sm"]["unacked"]) == ["<c/>", "<d/>"]
    assert (data["sm"]["h_in"], data["sm"]["h_out"], data["priority"], data["jid"]) == (
        3,
        4,
        5,
        "bob@localhost/phone",
    )
    copies.apply([{"op": "ended", "id": "s1", "jid": "bob@localhost/phone"}])
    assert len(copies) == 0


def test_a_lagging_copy_catches_up_with_what_the_client_got() -> None:
    """The dead process wrote two stanzas its copy never heard of: the client's 'h' moves the counter."""
    state = SmState.start(resume=True, resume_timeout=60.0)
    state.sent(etree.fromstring("<message><body>1</body></message>"))
    state.lagging = True
    state.catch_up(3, limit=10)
    assert (state.h_out, len(state.unacked)) == (3, 0)
    state.acknowledge(3)
    again = SmState.start(resume=True, resume_timeout=60.0)
    again.catch_up(3, limit=10)  # not lagging: an impossible 'h' stays an error
    with pytest.raises(HandledCountTooHigh):
        again.acknowledge(3)
    far = SmState.start(resume=True, resume_timeout=60.0)
    far.lagging = True
    far.catch_up(50, limit=10)  # further than any queue could be: wrong
    with pytest.raises(HandledCountTooHigh):
        far.acknowledge(50)
