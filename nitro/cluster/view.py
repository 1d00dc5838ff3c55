"""This node's mirror of the other nodes' bound resources, answered synchronously to the sessions registry.

Kept up to date from the announcements every node publishes (bind, change, unbind, full snapshots); the
resources of a node that stops answering are left out (`suspect`) until it announces itself again, and
dropped when it is declared dead.
"""

from __future__ import annotations

import logging
from typing import Any

from nitro.cluster.wire import Announced, WireError
from nitro.core.sessions import Resource
from nitro.xmpp.jid import JID, InvalidJID

log = logging.getLogger(__name__)


class RemoteView:
    """Other nodes' resources by bare JID (never this node's own: those are in the local registry)."""

    def __init__(self, local_node: str) -> None:
        self.local_node = local_node
        self._by_bare: dict[JID, dict[str, Resource]] = {}
        self._by_node: dict[str, set[JID]] = {}  # node → full JIDs it holds
        self.boots: dict[str, str] = {}  # node → token of the run that announced itself last
        self.suspect: set[str] = set()  # nodes that did not answer: their resources are not offered

    # -- what the sessions registry asks --------------------------------------------------------------

    def resources(self, bare: JID) -> list[Resource]:
        found = self._by_bare.get(bare.bare)
        if not found:
            return []
        return [r for r in found.values() if r.node not in self.suspect]

    def resource(self, full: JID) -> Resource | None:
        if full.resource is None:
            return None
        found = self._by_bare.get(full.bare, {}).get(full.resource)
        return None if found is None or found.node in self.suspect else found

    # -- what the announcements say -------------------------------------------------------------------

    def nodes(self) -> set[str]:
        return set(self._by_node) | set(self.boots)

    def held_by(self, node: str) -> list[Resource]:
        """The resources `node` announced (including a suspect node's)."""
        found = []
        for full in self._by_node.get(node, ()):
            resource = self._by_bare.get(full.bare, {}).get(full.resource or "")
            if resource is not None and resource.node == node:
                found.append(resource)
        return found

    def count(self, node: str) -> int:
        return len(self._by_node.get(node, ()))

    def apply(self, node: str, kind: str, message: dict[str, Any]) -> None:
        """Another node's announcement of kind `kind` ("put", "del", "snapshot", "down"; others are ignored).
        Raises WireError, KeyError or TypeError for a malformed one."""
        if kind == "put":
            self.put(node, Announced.from_json(message["r"]))
        elif kind == "del":
            self.remove(node, str(message["jid"]))
        elif kind == "snapshot":
            records = [Announced.from_json(item) for item in message["items"]]
            if message.get("part") == 0:
                self.replace(node, records)
            else:
                for record in records:
                    self.put(node, record)
        elif kind == "down":
            self.drop_node(node)

    def put(self, node: str, record: Announced) -> None:
        if node == self.local_node:
            return
        try:
            resource = record.resource(node)
        except (InvalidJID, WireError) as exc:
            log.warning("node %s announced an unusable resource: %s", node, exc)
            return
        full = resource.jid
        assert full.resource is not None
        resources = self._by_bare.setdefault(full.bare, {})
        previous = resources.get(full.resource)
        if previous is not None and previous.node != node:
            self._by_node.get(previous.node, set()).discard(full)
        resources[full.resource] = resource
        self._by_node.setdefault(node, set()).add(full)

    def remove(self, node: str, jid: str) -> None:
        try:
            full = JID.parse(jid)
        except InvalidJID:
            return
        resources = self._by_bare.get(full.bare)
        if resources is not None and full.resource is not None:
            current = resources.get(full.resource)
            if current is not None and current.node == node:
                del resources[full.resource]
                if not resources:
                    del self._by_bare[full.bare]
        self._by_node.get(node, set()).discard(full)

    def replace(self, node: str, records: list[Announced]) -> None:
        """A node's full snapshot: exactly these resources are on it now."""
        self.drop_node(node, forget=False)
        for record in records:
            self.put(node, record)
        self.suspect.discard(node)

    def drop_node(self, node: str, *, forget: bool = True) -> list[Resource]:
        """Remove everything `node` announced; returns what was removed."""
        gone = self.held_by(node)
        for resource in gone:
            self.remove(node, str(resource.jid))
        self._by_node.pop(node, None)
        if forget:
            self.boots.pop(node, None)
            self.suspect.discard(node)
        return gone
