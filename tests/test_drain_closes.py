"""The drain's closes of sessions that cannot move (nitro/ops/drain_closes.py): started without waiting, so
a slow proof of reading never sets the drain's pace; the successor hears `left` for a batch only once its
sessions are closed; the drain's `wait` returns when every close has; a successor gone at `left` time is
logged, not raised (the drain's reader sees it and rolls back)."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from nitro.c2s.session import ClientSession
from nitro.ops.drain_closes import Closes
from nitro.ops.handover import HandoverClosed


class Named:
    """What Closes reads of a session: its JID."""

    def __init__(self, jid: str) -> None:
        self.jid = jid


def sessions(*jids: str) -> list[ClientSession]:
    return [cast(ClientSession, Named(jid)) for jid in jids]


async def test_closes_run_beside_the_drain_and_left_follows_each_batch() -> None:
    closed: list[str] = []
    told: list[tuple[list[str], list[str]]] = []  # (what `left` named, what was closed by then)

    async def close(session: ClientSession) -> None:
        await asyncio.sleep(0.3)  # a client slow to prove what it read
        closed.append(str(session.jid))

    async def gone(jids: list[str]) -> None:
        told.append((jids, list(closed)))

    closes = Closes(close, gone)
    closes.start(sessions("a@x/1", "b@x/1"))  # synchronous: the drain goes on at its own pace
    closes.start(sessions("c@x/1"))
    closes.start([])
    assert closed == []
    closes.reap()  # none finished yet: nothing to forget, nothing raised
    await closes.wait()
    assert sorted(closed) == ["a@x/1", "b@x/1", "c@x/1"]
    assert sorted(jids for jids, _ in told) == [["a@x/1", "b@x/1"], ["c@x/1"]]
    for jids, closed_then in told:
        assert set(jids) <= set(closed_then)  # `left` only once the batch is closed


async def test_a_successor_gone_at_left_time_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def close(_session: ClientSession) -> None:
        return None

    async def gone(_jids: list[str]) -> None:
        raise HandoverClosed("cannot send: broken pipe")

    closes = Closes(close, gone)
    closes.start(sessions("a@x/1"))
    await closes.wait()
    assert "could not tell the successor 1 sessions closed" in caplog.text


async def test_a_close_that_raises_surfaces_at_reap() -> None:
    async def close(_session: ClientSession) -> None:
        raise RuntimeError("a bug in a close")

    async def gone(_jids: list[str]) -> None:
        return None

    closes = Closes(close, gone)
    closes.start(sessions("a@x/1"))
    await asyncio.sleep(0.05)
    with pytest.raises(RuntimeError, match="a bug"):
        closes.reap()
    await closes.wait()  # forgotten once raised
