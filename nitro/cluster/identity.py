"""A node's name and liveness in the Redis ring: a heartbeat key with a TTL, claimed once per run.

The key holds who claimed it (a random token per run, pid, host) and the node's session count, so
`nitro status` can list the live nodes. A second process claiming a live name is refused; a key left by a
run that died (its node answers no NATS ping) is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from typing import Any

from nitro.storage.errors import StorageError
from nitro.storage.ring.instance import RingUnavailable
from nitro.storage.ring.ring import Ring, command

MAX_NODES = 1000

# Refresh our heartbeat only while it is ours (or gone): KEYS[1], ARGV token, value, px → 1, or 0 if taken.
_REFRESH = """
local current = redis.call('GET', KEYS[1])
if current and not string.find(current, ARGV[1], 1, true) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


def member_key(ring: Ring, node: str) -> str:
    return ring.keys.key("member", 1, node)


class NodeIdentity:
    """This run of a node: its name, a token no other run shares, and its heartbeat."""

    def __init__(self, ring: Ring, node: str, ttl: float, token: str | None = None) -> None:
        self.ring = ring
        self.node = node
        self.ttl = ttl
        # this run (a restarted node gets a new one; an upgrade's successor continues its predecessor's)
        self.token = token or secrets.token_hex(8)
        self.started = time.time()
        self.sessions = 0  # updated by the cluster before each heartbeat

    def _value(self) -> bytes:
        return json.dumps(
            {
                "token": self.token,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "sessions": self.sessions,
                "started": self.started,
                "at": time.time(),
            }
        ).encode()

    async def holder(self) -> dict[str, Any] | None:
        """What the ring says about this name now (None: no live run holds it)."""
        return await read_member(self.ring, self.node)

    async def claim(self) -> bool:
        """Take the name if free; False if another run holds it (the caller decides if that run lives)."""
        key = member_key(self.ring, self.node)
        (reply,) = await self.ring.pipelines(
            [(self.node, command("SET", key, self._value(), "NX", "PX", int(self.ttl * 1000)))]
        )
        if isinstance(reply, Exception):
            raise RingUnavailable(f"cannot register node {self.node}: {reply}")
        return reply is True

    async def take_over(self) -> None:
        """The name's holder is gone (it answers no ping): make the key ours."""
        key = member_key(self.ring, self.node)
        await self.ring.pipelines(
            [(self.node, command("SET", key, self._value(), "PX", int(self.ttl * 1000)))]
        )

    async def beat(self) -> bool:
        """Refresh the heartbeat; False if another run took the name meanwhile."""
        key = member_key(self.ring, self.node)
        px = int(self.ttl * 1000)
        (reply,) = await self.ring.pipelines(
            [(self.node, command("EVAL", _REFRESH, 1, key, self.token, self._value(), px))]
        )
        return not (isinstance(reply, int) and reply == 0)

    async def release(self) -> None:
        key = member_key(self.ring, self.node)
        with contextlib.suppress(StorageError, RingUnavailable):
            holder = await self.holder()
            if holder is not None and holder.get("token") == self.token:
                await self.ring.pipelines([(self.node, command("DEL", key))])


async def read_member(ring: Ring, node: str) -> dict[str, Any] | None:
    (value,) = await ring.get_many([(node, member_key(ring, node))])
    if value is None:
        return None
    try:
        data = json.loads(value)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


async def live_members(ring: Ring) -> dict[str, dict[str, Any]]:
    """Every node whose heartbeat is in the ring, with what its key says (sessions, pid, host)."""
    prefix = member_key(ring, "")
    names: set[str] = set()

    async def scan(client: Any) -> list[bytes]:
        keys: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=500):
            keys.append(key)
            if len(keys) >= MAX_NODES:
                break
        return keys

    for instance in ring.live:
        with contextlib.suppress(StorageError, RingUnavailable):
            for key in await instance.call(scan):
                names.add(key.decode(errors="replace").removeprefix(prefix))
    found: dict[str, dict[str, Any]] = {}
    for name in sorted(names):
        member = await read_member(ring, name)
        if member is not None:
            found[name] = member
    return found
