"""Node death: a node whose heartbeat left the ring and that answers no ping is gone. Every survivor stops
offering its resources at once; one survivor at a time (a lock key in the ring) sends `unavailable` on
behalf of its users to their contacts (RFC 6121 §4.5.2) and removes its records from the directory.
A node that restarts is treated the same for what its previous run held.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lxml import etree

from nitro.cluster.identity import read_member
from nitro.cluster.link import LinkDown
from nitro.cluster.wire import Announced, WireError, decode, encode, subject_of
from nitro.core.directory import SessionRecord
from nitro.core.sessions import Resource
from nitro.storage.errors import StorageError
from nitro.storage.ring.ring import command
from nitro.xmpp import ns
from nitro.xmpp.jid import JID

if TYPE_CHECKING:
    from nitro.cluster.link import NatsLink
    from nitro.cluster.view import RemoteView
    from nitro.config_sections import ClusterSection
    from nitro.core.context import Core
    from nitro.storage.ring.ring import Ring

log = logging.getLogger(__name__)

LOCK_SECONDS = 60


@dataclass(slots=True)
class Member:
    """What the sweeper needs of this node's membership (nitro/cluster/node.py)."""

    core: Core
    node: str
    settings: ClusterSection
    link: NatsLink
    ring: Ring
    view: RemoteView
    ping: Callable[[str], Awaitable[bool]]


class Sweeper:
    def __init__(self, cluster: Member) -> None:
        self.cluster = cluster
        self.swept: list[str] = []  # nodes this node declared gone (for tests and logs)

    async def check(self) -> None:
        """Each known node whose heartbeat is gone, or now names another run, and that answers no ping."""
        cluster = self.cluster
        if not cluster.link.connected:
            return  # we cannot tell a dead node from our own cut-off
        for node in sorted(cluster.view.nodes() - {cluster.node}):
            member = await read_member(cluster.ring, node)
            boot = cluster.view.boots.get(node)
            if member is not None and (boot is None or member.get("token") == boot):
                if node in cluster.view.suspect and await cluster.ping(node):
                    await self._resync(node)
                continue
            if member is not None and boot is not None:
                await self.node_gone(node, boot)  # restarted: its new run announces itself
                continue
            if await cluster.ping(node):
                continue  # alive; its heartbeat was on a Redis instance that died and comes back next beat
            await self.node_gone(node, boot)

    async def _resync(self, node: str) -> None:
        """A node we left out answers again: take its current resources."""
        cluster = self.cluster
        try:
            reply = decode(
                await cluster.link.request(
                    subject_of(cluster.settings.name, node),
                    encode({"t": "snapshot"}),
                    cluster.settings.request_timeout,
                )
            )
            records = [Announced.from_json(item) for item in reply.get("items", [])]
        except (LinkDown, WireError):
            return
        cluster.view.boots[node] = str(reply.get("boot"))
        cluster.view.replace(node, records)
        log.info("node %s answers again: %d resources", node, len(records))

    async def node_gone(self, node: str, boot: str | None) -> None:
        cluster = self.cluster
        gone = cluster.view.drop_node(node)
        self.swept.append(node)
        log.warning("node %s is gone: %d of its resources leave", node, len(gone))
        if not gone or not await self._lock(node, boot):
            return
        for resource in gone:
            try:
                await self._offline(node, resource)
            except StorageError as exc:
                log.warning("could not finish %s of dead node %s: %s", resource.jid, node, exc)

    async def _lock(self, node: str, boot: str | None) -> bool:
        """One survivor per dead run does the work."""
        ring = self.cluster.ring
        key = ring.keys.key("sweep", 1, node, boot or "-")
        (reply,) = await ring.pipelines(
            [(node, command("SET", key, self.cluster.node, "NX", "PX", LOCK_SECONDS * 1000))]
        )
        return reply is True

    async def _offline(self, node: str, resource: Resource) -> None:
        core = self.cluster.core
        jid = resource.jid
        await self._forget(node, jid)
        if not resource.available or jid.local is None:
            return
        # RFC 6121 §4.5.2 for the user: contacts with a subscription from it, and its other resources.
        roster = await core.storage.rosters.get(jid.local)
        targets = [JID.parse(item.jid) for item in roster.items if item.subscription in ("from", "both")]
        targets += [r.jid for r in core.sessions.resources(jid.bare) if r.jid != jid and r.available]
        for target in targets:
            presence = etree.Element(f"{{{ns.CLIENT}}}presence", type="unavailable")
            presence.set("from", str(jid))
            presence.set("to", str(target))
            await core.router.route(presence)

    async def _forget(self, node: str, jid: JID) -> None:
        """Its record in the ring's session directory, unless another node bound that JID since."""
        ring = self.cluster.ring
        bare = str(jid.bare)
        key = ring.keys.sessions(bare)
        (data,) = await ring.pipelines([(bare, command("HGET", key, jid.resource))])
        if isinstance(data, bytes):
            try:
                record = SessionRecord.decode(data)
            except (ValueError, TypeError):
                record = None
            if record is None or record.node == node:
                await ring.pipelines([(bare, command("HDEL", key, jid.resource))])
