"""The session directory: which node holds each bound resource of a bare JID, with its presence.

Ephemeral data: in the Redis ring when one is configured (a hash per bare JID, resource → record),
in memory otherwise. Each node heartbeats its own key and re-publishes its sessions every `ttl / 3`
seconds and whenever the set of live instances changes, so records lost with a Redis instance come
back within that time; the records of a node that died expire after `ttl`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nitro.storage.ring.instance import RingUnavailable
from nitro.storage.ring.ring import Ring, command
from nitro.xmpp.jid import JID

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One bound resource as the directory knows it."""

    node: str  # the node holding the session
    presence: bytes | None  # the last available presence broadcast (serialized), None if unavailable
    priority: int = 0
    expires: float = 0.0  # wall-clock time after which a record not refreshed is ignored

    def encode(self) -> bytes:
        presence = None if self.presence is None else base64.b64encode(self.presence).decode()
        return json.dumps([self.node, presence, self.priority, self.expires]).encode()

    @classmethod
    def decode(cls, data: bytes) -> SessionRecord:
        node, presence, priority, expires = json.loads(data)
        return cls(
            str(node), None if presence is None else base64.b64decode(presence), int(priority), float(expires)
        )


class SessionDirectory:
    """This node's view of the cluster's sessions; this node writes only its own."""

    def __init__(self, ring: Ring | None, node_id: str, ttl: float) -> None:
        self.ring = ring
        self.node_id = node_id
        self.ttl = ttl
        self.republished = 0  # how many times the local records were written out (for tests and metrics)
        self._local: dict[str, dict[str, SessionRecord]] = {}  # bare JID → resource → record
        self._wake = asyncio.Event()
        self.on_change: list[Callable[[JID, SessionRecord | None], None]] = []
        if ring is not None:
            ring.listeners.append(self._wake.set)

    # -- this node's sessions -----------------------------------------------------------------------------

    async def put(self, jid: JID, presence: bytes | None, priority: int = 0) -> None:
        """Record (or update) a bound resource of this node."""
        assert jid.resource is not None
        record = SessionRecord(self.node_id, presence, priority, time.time() + self.ttl)
        self._local.setdefault(str(jid.bare), {})[jid.resource] = record
        await self._write([(str(jid.bare), jid.resource, record)])
        for callback in list(self.on_change):
            callback(jid, record)

    async def remove(self, jid: JID) -> None:
        assert jid.resource is not None
        bare = str(jid.bare)
        resources = self._local.get(bare, {})
        if resources.pop(jid.resource, None) is None:
            return
        if not resources:
            del self._local[bare]
        if self.ring is not None:
            await self.ring.pipelines([(bare, command("HDEL", self.ring.keys.sessions(bare), jid.resource))])
        for callback in list(self.on_change):
            callback(jid, None)

    # -- the cluster's view -------------------------------------------------------------------------------

    async def resources(self, bare: JID) -> dict[str, SessionRecord]:
        """The live resources of a bare JID on every node (this node's are always known)."""
        name = str(bare.bare)
        found = dict(self._local.get(name, {}))
        if self.ring is None:
            return found
        (reply,) = await self.ring.pipelines([(name, command("HGETALL", self.ring.keys.sessions(name)))])
        if isinstance(reply, RingUnavailable):
            return found  # the instance went out: owners re-publish within ttl / 3
        if not isinstance(reply, dict):
            log.warning("session directory entry of %s unreadable: %s", name, reply)
            return found
        now = time.time()
        for resource, data in reply.items():
            try:
                record = SessionRecord.decode(data)
            except (ValueError, TypeError) as exc:
                log.warning("undecodable session record for %s: %s", name, exc)
                continue
            if record.expires > now and record.node != self.node_id:
                found.setdefault(resource.decode(), record)
        return found

    async def node_alive(self, node_id: str) -> bool:
        if node_id == self.node_id:
            return True
        if self.ring is None:
            return False
        values = await self.ring.get_many([(node_id, self.ring.keys.node(node_id))])
        return values[0] is not None

    # -- refresh ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Heartbeat and re-publish every ttl / 3 (sooner when the ring changes) until cancelled."""
        try:
            while True:
                await self.refresh()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.ttl / 3)
        finally:
            if self.ring is not None:  # leave quickly: our records would expire anyway
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._forget(), self.ring.settings.socket_timeout * 2)

    async def refresh(self) -> None:
        if self.ring is None:
            return
        expires = time.time() + self.ttl
        records: list[tuple[str, str, SessionRecord]] = []
        for bare, resources in self._local.items():
            for resource, record in resources.items():
                renewed = SessionRecord(record.node, record.presence, record.priority, expires)
                resources[resource] = renewed
                records.append((bare, resource, renewed))
        await self.ring.set_many([(self.node_id, self.ring.keys.node(self.node_id), b"1")], self.ttl)
        await self._write(records)
        self.republished += 1

    async def _write(self, records: list[tuple[str, str, SessionRecord]]) -> None:
        if self.ring is None or not records:
            return
        px = int(self.ttl * 1000)
        operations: list[tuple[str, Callable[[Any], Any]]] = []
        for bare, resource, record in records:
            operations.append(
                (bare, command("HSET", self.ring.keys.sessions(bare), resource, record.encode()))
            )
            operations.append((bare, command("PEXPIRE", self.ring.keys.sessions(bare), px)))
        await self.ring.pipelines(operations)

    async def _forget(self) -> None:
        assert self.ring is not None
        operations: list[tuple[str, Callable[[Any], Any]]] = [
            (bare, command("HDEL", self.ring.keys.sessions(bare), *resources))
            for bare, resources in self._local.items()
        ]
        operations.append((self.node_id, command("DEL", self.ring.keys.node(self.node_id))))
        await self.ring.pipelines(operations)
