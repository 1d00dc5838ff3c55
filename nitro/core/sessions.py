"""The sessions registry: which resources are bound, answered as immutable `Resource` values.

Modules ask `resources(bare)` / `resource(full)` and reach other entities only through `deliver()`
(nitro/core/delivery.py); the session objects themselves stay with the c2s layer, the admin channel and the
tests (`get`, `sessions_of`, iteration). In a cluster, `remote` adds other nodes' resources to the same
calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from lxml import etree

from nitro.xmpp.jid import JID
from nitro.xmpp.stanza import parse_kept

LOCAL_NODE = "local"
INTERESTED = "interested"  # Resource flag: it requested the roster, gets roster pushes (RFC 6121 §2.1.6)


@dataclass(frozen=True, slots=True)
class Resource:
    """One bound resource as modules see it: a value, never the live session.

    `flags` are what modules decided about the resource (e.g. "carbons", "interested", "blocklist");
    `presence_xml` is its last available presence (None when unavailable) as `xmlwrite.self_contained` bytes:
    an element per idle session would cost some 1.2 to 3 KB of libxml2 memory, bytes a tenth of that.
    """

    jid: JID
    node: str
    available: bool
    priority: int
    flags: frozenset[str]
    presence_xml: bytes | None = None
    directed_to: frozenset[JID] = frozenset()  # entities that got directed presence from it (RFC 6121 §4.6)

    def has(self, flag: str) -> bool:
        return flag in self.flags

    @property
    def presence(self) -> etree._Element | None:
        """The last available presence as a new element, parsed at each call (None when unavailable)."""
        return None if self.presence_xml is None else parse_kept(self.presence_xml)


class RemoteResources(Protocol):
    """Other nodes' resources (nitro/cluster/view.py), joined to this node's in `resources`/`resource`."""

    def resources(self, bare: JID) -> list[Resource]: ...

    def resource(self, full: JID) -> Resource | None: ...


class BoundSession(Protocol):
    """What the registry needs from a bound session."""

    @property
    def jid(self) -> JID: ...

    @property
    def resource(self) -> Resource: ...

    def send(self, element: etree._Element) -> None: ...


S = TypeVar("S", bound=BoundSession)


class Sessions(Generic[S]):
    """This node's bound sessions by bare JID and resource (one registry; the cluster directory joins it)."""

    def __init__(self) -> None:
        self._by_bare: dict[JID, dict[str, S]] = {}
        self.remote: RemoteResources | None = None  # set while this node is a cluster member

    # -- what modules ask ----------------------------------------------------------------------------

    def resources(self, bare: JID) -> list[Resource]:
        """Every bound resource of an account, on this node and (in a cluster) on the others, as values."""
        local = self._by_bare.get(bare.bare, {})
        found = [session.resource for session in local.values()]
        if self.remote is not None:
            found.extend(r for r in self.remote.resources(bare) if r.jid.resource not in local)
        return found

    def resource(self, full: JID) -> Resource | None:
        session = self.get(full)
        if session is not None:
            return session.resource
        return None if self.remote is None else self.remote.resource(full)

    def available(self, bare: JID) -> bool:
        """Whether the account has an available resource (RFC 6121 §4.1) here or on another node."""
        for session in self._by_bare.get(bare.bare, {}).values():
            if session.resource.available:
                return True
        return self.remote is not None and any(r.available for r in self.remote.resources(bare))

    def online(self, bare: JID) -> bool:
        return bool(self._by_bare.get(bare.bare)) or (
            self.remote is not None and bool(self.remote.resources(bare))
        )

    # -- the c2s layer, delivery, admin and tests ----------------------------------------------------

    def add(self, session: S) -> S | None:
        """Register a bound session; returns the session it replaces (same full JID), if any."""
        jid = session.jid
        assert jid.resource is not None
        resources = self._by_bare.setdefault(jid.bare, {})
        previous = resources.get(jid.resource)
        resources[jid.resource] = session
        return previous

    def remove(self, session: S) -> None:
        jid = session.jid
        resources = self._by_bare.get(jid.bare)
        if resources is None or jid.resource is None or resources.get(jid.resource) is not session:
            return
        del resources[jid.resource]
        if not resources:
            del self._by_bare[jid.bare]

    def get(self, full: JID) -> S | None:
        """This node's session bound to `full` (not for modules: they deliver)."""
        if full.resource is None:
            return None
        return self._by_bare.get(full.bare, {}).get(full.resource)

    def sessions_of(self, bare: JID) -> list[S]:
        """This node's sessions of an account (not for modules: they use `resources`)."""
        return list(self._by_bare.get(bare.bare, {}).values())

    def __iter__(self) -> Iterator[S]:
        for resources in list(self._by_bare.values()):
            yield from list(resources.values())

    def __len__(self) -> int:
        return sum(len(resources) for resources in self._by_bare.values())
