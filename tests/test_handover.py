"""The upgrade socket's protocol (nitro/ops/handover.py) over a real socket pair: messages and listening
sockets pass; garbage of every kind is a HandoverError (descriptors closed), never a crash; a successor
started with garbage on its socket says so and exits; the listener registry inherits and duplicates."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from upgrade_node import write_config

from nitro.ops.handover import MAX_MESSAGE, Channel, HandoverClosed, HandoverError
from nitro.transports.listeners import Listeners


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Channel, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = Channel(ours)
    try:
        yield channel, theirs
    finally:
        channel.close()
        theirs.close()


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_hello_carries_listening_sockets_that_still_accept() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sender, receiver = Channel(ours), Channel(theirs)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        await sender.send({"type": "hello", "generation": 2, "listeners": [["c2s", 1]]}, [listener.fileno()])
        message, sockets = await receiver.receive(5)
        assert message == {"type": "hello", "generation": 2, "listeners": [["c2s", 1]]}
        (inherited,) = sockets
        listener.close()  # the old process's copy goes; the kernel socket lives on in the successor's
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        accepted, _ = inherited.accept()
        accepted.close()
        client.close()
        inherited.close()
    finally:
        sender.close()
        receiver.close()
        listener.close()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (struct.pack(">I", 0), "bad message length 0"),
        (struct.pack(">I", MAX_MESSAGE + 1), "bad message length"),
        (frame(b"\xff\xfe not json"), "not JSON"),
        (frame(b"[1, 2]"), "a message is a JSON object"),
        (frame(b'{"no": "type"}'), "unknown message type None"),
        (frame(b'{"type": "format-disk"}'), "unknown message type 'format-disk'"),
        (frame(b'{"type": "ready"}'), "field 'pid' missing"),
        (frame(b'{"type": "ready", "pid": "12"}'), "field 'pid' missing or not int"),
        (frame(b'{"type": "ready", "pid": true}'), "field 'pid' missing or not int"),
        (frame(b'{"type": "ready", "pid": 1, "extra": 1}'), "unexpected fields"),
        (
            frame(b'{"type": "hello", "generation": 2, "listeners": [["c2s", 1]]}'),
            "names 1 sockets, carries 0",
        ),
        (frame(b'{"type": "hello", "generation": 2, "listeners": [["c2s", -1]]}'), "[name, count] pairs"),
        (frame(b'{"type": "sessions", "sessions": [1]}'), "every session is an object"),
        (frame(b'{"type": "adopted", "ids": [1], "refused": []}'), "ids are strings"),
        (frame(b'{"type": "shadow", "sessions": ["x"]}'), "shadow: every session is an object"),
        (frame(b'{"type": "journal"}'), "field 'entries' missing"),
        (frame(b'{"type": "journal", "entries": [1]}'), "every entry is an object"),
        (frame(b'{"type": "journal", "entries": [{"op": "rm"}]}'), "unknown entry 'rm'"),
        (frame(b'{"type": "journal", "entries": [{"id": "x"}]}'), "unknown entry None"),
        (frame(b'{"type": "journal", "entries": [{"op": "sm", "id": "x"}]}'), "field 'h_in' missing"),
        (
            frame(b'{"type": "journal", "entries": [{"op": "ended", "id": "x", "jid": "a@b", "more": 1}]}'),
            "unexpected fields",
        ),
        (
            frame(
                b'{"type": "journal", "entries": [{"op": "sm", "id": "x", "h_in": 1, "h_out": 1, '
                b'"queued": 0, "stanzas": [1]}]}'
            ),
            "stanzas are strings",
        ),
        (
            frame(
                b'{"type": "journal", "entries": [{"op": "sm", "id": "x", "h_in": -1, "h_out": 1, '
                b'"queued": 0, "stanzas": []}]}'
            ),
            "counters are unsigned",
        ),
        (
            frame(b'{"type": "journal", "entries": [{"op": "resource", "id": "x", "resource": []}]}'),
            "not dict",
        ),
    ],
)
async def test_garbage_is_a_handover_error(
    pair: tuple[Channel, socket.socket], data: bytes, error: str
) -> None:
    channel, peer = pair
    peer.sendall(data)
    with pytest.raises(HandoverError, match=error.replace("[", r"\[").replace("]", r"\]")):
        await channel.receive(2)


async def test_descriptors_on_a_message_that_takes_none_are_closed(
    pair: tuple[Channel, socket.socket],
) -> None:
    channel, peer = pair
    extra = socket.socket()
    before = open_fds()
    socket.send_fds(peer, [frame(json.dumps({"type": "ready", "pid": 1}).encode())], [extra.fileno()] * 3)
    with pytest.raises(HandoverError, match="carries descriptors"):
        await channel.receive(2)
    assert open_fds() == before  # the three received copies were closed
    extra.close()


async def test_a_truncated_message_and_a_closed_peer(pair: tuple[Channel, socket.socket]) -> None:
    channel, peer = pair
    peer.sendall(struct.pack(">I", 100) + b'{"type"')
    peer.close()
    with pytest.raises(HandoverClosed):
        await channel.receive(2)


async def test_silence_is_a_timeout(pair: tuple[Channel, socket.socket]) -> None:
    channel, _peer = pair
    with pytest.raises(HandoverError, match=r"no message within 0\.2 s"):
        await channel.receive(0.2)


@pytest.mark.fault
async def test_a_successor_given_garbage_says_so_and_exits(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nitro",
        "--config",
        str(config),
        "serve",
        pass_fds=(theirs.fileno(),),
        env={**os.environ, "NITRO_HANDOVER_FD": str(theirs.fileno())},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    theirs.close()
    try:
        ours.sendall(frame(b"<stream:stream>"))
        out, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        ours.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 1
    assert b"the upgrade socket is unusable: not JSON" in out
    assert b"Traceback" not in out


async def test_the_registry_inherits_by_name_and_binds_the_rest() -> None:
    first = Listeners()
    (c2s,) = first.tcp("c2s", "127.0.0.1", 0, 16)
    port = c2s.getsockname()[1]
    copies = first.dup()
    successor = Listeners({"c2s": copies["c2s"], "gone": [socket.socket()]})
    assert successor.from_predecessor
    (inherited,) = successor.tcp("c2s", "127.0.0.1", 12345, 16)  # the inherited socket, not a new bind
    assert inherited.getsockname()[1] == port
    (fresh,) = successor.tcp("http", "127.0.0.1", 0, 16)
    successor.close_unclaimed()  # "gone" is no longer configured: closed
    assert sorted(successor.names()) == ["c2s", "http"]
    for sock in (c2s, inherited, fresh):
        sock.close()
