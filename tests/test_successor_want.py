"""A `<resume/>` at the successor for a session still in the old process (nitro/ops/successor.py `_pull`):
the successor asks for it over a real upgrade socket and waits. While the old process still holds a resource
of the user, the session may be in a `sessions` message the successor has not read yet (a busy successor
adopts behind its socket's backlog; the 1,000-client upgrade-under-load run lost resumes that way): the wait
goes on past WANT_TIMEOUT, bounded by WANT_TIMEOUT_IN_TRANSIT. Otherwise it ends at WANT_TIMEOUT."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from nitro.c2s.session import ClientSession
from nitro.core.module import ResumeRequest
from nitro.ops import successor
from nitro.ops.handover import Channel
from nitro.ops.successor import Predecessor
from nitro.xmpp.jid import JID

SHORT, LONG = 0.3, 1.5  # the two timeouts, scaled down
USER = JID.parse("trader@example.test")


@pytest.fixture
async def predecessor(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Predecessor, socket.socket]]:
    monkeypatch.setattr(successor, "WANT_TIMEOUT", SHORT)
    monkeypatch.setattr(successor, "WANT_TIMEOUT_IN_TRANSIT", LONG)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.setblocking(False)
    channel = Channel(ours)
    try:
        yield Predecessor(channel, generation=2, inherited={}), theirs
    finally:
        channel.close()
        theirs.close()


async def read_message(sock: socket.socket) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    header = await loop.sock_recv(sock, 4)
    (length,) = struct.unpack(">I", header)
    body = b""
    while len(body) < length:
        body += await loop.sock_recv(sock, length - len(body))
    message: dict[str, Any] = json.loads(body)
    return message


def arrive_later(old: Predecessor, previd: str, session: object, delay: float) -> None:
    """What `_adopt` does when the session's export is read: the resuming stream's future resolves."""

    def arrive() -> None:
        future = old._arrived.get(previd)
        if future is not None and not future.done():
            future.set_result(cast(ClientSession, session))

    asyncio.get_running_loop().call_later(delay, arrive)


async def test_a_session_still_on_its_way_is_waited_for_past_the_short_timeout(
    predecessor: tuple[Predecessor, socket.socket],
) -> None:
    old, theirs = predecessor
    old._on_old[str(USER)] = {f"{USER}/desk"}  # the old process still holds the user's resource
    session = object()
    arrive_later(old, "sm-1", session, SHORT + 0.7)
    request = ResumeRequest("sm-1", USER)
    assert await old._pull(request) is True
    assert request.found is session
    assert await read_message(theirs) == {"type": "want", "previd": "sm-1"}


async def test_without_a_resource_in_the_old_process_the_wait_ends_at_the_short_timeout(
    predecessor: tuple[Predecessor, socket.socket],
) -> None:
    old, theirs = predecessor
    arrive_later(old, "sm-2", object(), SHORT + 0.7)  # too late: nothing said it was coming
    started = time.monotonic()
    request = ResumeRequest("sm-2", USER)
    assert await old._pull(request) is False
    assert request.found is None
    assert SHORT <= time.monotonic() - started < SHORT + 0.5
    assert await read_message(theirs) == {"type": "want", "previd": "sm-2"}


async def test_a_session_that_never_comes_is_given_up_at_the_long_timeout(
    predecessor: tuple[Predecessor, socket.socket],
) -> None:
    old, _theirs = predecessor
    old._on_old[str(USER)] = {f"{USER}/desk"}
    started = time.monotonic()
    assert await old._pull(ResumeRequest("sm-3", USER)) is False
    assert LONG <= time.monotonic() - started < LONG + 0.5
    assert "sm-3" not in old._arrived


async def test_the_wait_ends_when_the_user_leaves_the_old_process(
    predecessor: tuple[Predecessor, socket.socket],
) -> None:
    """`left` for the user's last resource there: nothing more is coming, so no need to wait for LONG."""
    old, _theirs = predecessor
    old._on_old[str(USER)] = {f"{USER}/desk"}
    asyncio.get_running_loop().call_later(SHORT + 0.3, old._left, f"{USER}/desk")
    started = time.monotonic()
    assert await old._pull(ResumeRequest("sm-4", USER)) is False
    assert SHORT + 0.3 <= time.monotonic() - started < LONG
