"""The upgrade socket between an old Nitro process and its successor: length-prefixed JSON messages, with
listening sockets passed as SCM_RIGHTS descriptors, every message checked against its schema.

A message is a 4-byte big-endian length, then that many bytes of one JSON object with a "type". Only
`hello` may carry descriptors (the listeners, in the order its `listeners` list names them). Anything else
— a bad length, bytes that are not JSON, an unknown type, a missing or mistyped field, descriptors where none
belong — is a `HandoverError`: the caller drops the peer and logs why; nothing here raises anything else.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import socket
import struct
from typing import Any

MAX_MESSAGE = 64 * 1024 * 1024  # bytes of one message (a batch of sessions with their queues)
MAX_FDS = 64  # listening sockets in one hello
_HEADER = struct.Struct(">I")

# type → {field: type(s)}; fields not named are refused too
SCHEMAS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "hello": {"generation": int, "listeners": list},  # old → successor, with the descriptors
    "ready": {"pid": int},  # successor → old: accepting, checked
    "failed": {"reason": str},  # successor → old: cannot serve
    "sessions": {"sessions": list},  # old → successor: exported sessions to adopt
    "adopted": {"ids": list, "refused": list},  # successor → old: registered (or not) as resumable
    "deliver": {"to": str, "stanza": str},  # a stanza for a session the other process holds (both ways)
    "online": {"jids": list},  # old → successor: the full JIDs bound in the old process when the drain starts
    "left": {"jids": list},  # old → successor: these left the old process without moving
    "want": {"previd": str},  # successor → old: a client resumes this session here, hand it over now
    "cluster": {"handled": list},  # old → successor: it stopped answering for the node (these it answered)
    "done": {"moved": int, "closed": int},  # old → successor: the drain is over
    "shadow": {"sessions": list},  # old → successor: copies of the sessions still there (nitro/ops/shadow.py)
    "journal": {"entries": list},  # old → successor: what changed them in one loop turn (ENTRIES)
}

# a journal entry's "op" → {field: type(s)}
ENTRIES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "sm": {"id": str, "h_in": int, "h_out": int, "queued": int, "stanzas": list},  # counters, new stanzas
    "resource": {"id": str, "resource": dict},  # presence, priority, flags, directed presence, slots
    "bound": {"session": dict},  # bound (or stream management enabled) there during the drain
    "ended": {"id": str, "jid": str},  # ended there (its unavailable presence went out there)
}


class HandoverError(Exception):
    """The peer broke the protocol (or went away): drop it."""


class HandoverClosed(HandoverError):
    """The peer closed the socket (its process exited or gave up)."""


def _check_fields(
    kind: str, item: dict[str, Any], schema: dict[str, type | tuple[type, ...]], tag: str
) -> None:
    extra = set(item) - set(schema) - {tag}
    if extra:
        raise HandoverError(f"{kind}: unexpected fields {sorted(extra)}")
    for name, expected in schema.items():
        value = item.get(name)
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is int):
            raise HandoverError(
                f"{kind}: field {name!r} missing or not {getattr(expected, '__name__', expected)}"
            )


def _check_journal(entries: list[Any]) -> None:
    for entry in entries:
        if not isinstance(entry, dict):
            raise HandoverError("journal: every entry is an object")
        op = entry.get("op")
        schema = ENTRIES.get(op) if isinstance(op, str) else None
        if schema is None:
            raise HandoverError(f"journal: unknown entry {op!r}")
        _check_fields(f"journal {op}", entry, schema, "op")
        if op == "sm" and (
            not all(isinstance(stanza, str) for stanza in entry["stanzas"])
            or min(entry["h_in"], entry["h_out"], entry["queued"]) < 0
        ):
            raise HandoverError("journal sm: counters are unsigned, stanzas are strings")


def validate(message: Any, fds: int) -> dict[str, Any]:
    """`message` as a checked message dict; HandoverError naming what is wrong."""
    if not isinstance(message, dict):
        raise HandoverError("a message is a JSON object")
    kind = message.get("type")
    schema = SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise HandoverError(f"unknown message type {kind!r}")
    _check_fields(str(kind), message, schema, "type")
    if kind == "hello":
        listeners = message["listeners"]
        if not all(
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and type(item[1]) is int
            and item[1] > 0
            for item in listeners
        ):
            raise HandoverError("hello: listeners must be [name, count] pairs")
        if sum(item[1] for item in listeners) != fds:
            raise HandoverError(f"hello: names {sum(item[1] for item in listeners)} sockets, carries {fds}")
    elif fds:
        raise HandoverError(f"{kind}: carries descriptors it has no use for")
    if kind in ("sessions", "shadow") and not all(isinstance(item, dict) for item in message["sessions"]):
        raise HandoverError(f"{kind}: every session is an object")
    if kind == "journal":
        _check_journal(message["entries"])
    if kind == "adopted" and not all(isinstance(i, str) for i in [*message["ids"], *message["refused"]]):
        raise HandoverError("adopted: ids are strings")
    if kind in ("online", "left") and not all(isinstance(jid, str) for jid in message["jids"]):
        raise HandoverError(f"{kind}: JIDs are strings")
    return message


class Channel:
    """One end of the upgrade socket (a non-blocking AF_UNIX stream socket)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._send_lock = asyncio.Lock()
        self.closed = False

    async def send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
        if len(body) > MAX_MESSAGE:
            raise HandoverError(f"message of {len(body)} bytes is over {MAX_MESSAGE}")
        data = _HEADER.pack(len(body)) + body
        async with self._send_lock:
            try:
                sent = 0
                if fds:
                    await self._wait(writable=True)
                    sent = socket.send_fds(self.sock, [data], fds)
                if sent < len(data):
                    await self._loop.sock_sendall(self.sock, data[sent:])
            except OSError as exc:
                raise HandoverClosed(f"cannot send: {exc}") from exc

    async def receive(self, timeout: float | None = None) -> tuple[dict[str, Any], list[socket.socket]]:
        """The next message and the sockets it carried; HandoverError (descriptors closed) if it is bad."""
        fds: list[int] = []
        try:
            async with asyncio.timeout(timeout):
                header = await self._read(_HEADER.size, fds)
                (length,) = _HEADER.unpack(header)
                if length == 0 or length > MAX_MESSAGE:
                    raise HandoverError(f"bad message length {length}")
                body = await self._read(length, fds)
            message = validate(json.loads(body), len(fds))
        except TimeoutError as exc:
            _close_fds(fds)
            raise HandoverError(f"no message within {timeout} s") from exc
        except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
            _close_fds(fds)
            raise HandoverError(f"not JSON: {exc}") from exc
        except BaseException:
            _close_fds(fds)
            raise
        return message, [socket.socket(fileno=fd) for fd in fds]

    async def _read(self, size: int, fds: list[int]) -> bytes:
        """Exactly `size` bytes (never past them: the next message's descriptors stay with it)."""
        chunks: list[bytes] = []
        remaining = size
        space = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
        while remaining:
            try:
                data, ancillary, flags, _address = self.sock.recvmsg(remaining, space)
            except (BlockingIOError, InterruptedError):
                await self._wait(writable=False)
                continue
            except OSError as exc:
                raise HandoverClosed(f"cannot read: {exc}") from exc
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    received = array.array("i")
                    received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
                    fds.extend(received)
            if flags & socket.MSG_CTRUNC:
                raise HandoverError("too many descriptors")
            if not data:
                raise HandoverClosed("the peer closed the upgrade socket")
            chunks.append(data)
            remaining -= len(data)
        return b"".join(chunks)

    async def _wait(self, *, writable: bool) -> None:
        future: asyncio.Future[None] = self._loop.create_future()
        fileno = self.sock.fileno()
        if fileno < 0:
            raise HandoverClosed("the upgrade socket is closed")

        def ready() -> None:
            if not future.done():
                future.set_result(None)

        add, remove = (
            (self._loop.add_writer, self._loop.remove_writer)
            if writable
            else (self._loop.add_reader, self._loop.remove_reader)
        )
        add(fileno, ready)
        try:
            await future
        finally:
            remove(fileno)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            socket.close(fd)
