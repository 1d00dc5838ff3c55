"""Which client sessions are online on this node: bare JID → resource → session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from nitro.xmpp.jid import JID

if TYPE_CHECKING:
    from nitro.c2s.stream import ClientSession


class SessionManager:
    """The registry of bound resources; the cluster issue backs it with the Redis ring."""

    def __init__(self) -> None:
        self._by_bare: dict[JID, dict[str, ClientSession]] = {}

    def add(self, session: ClientSession) -> ClientSession | None:
        """Register a bound session; returns the session it replaces (same full JID), if any."""
        jid = session.jid
        assert jid.resource is not None
        resources = self._by_bare.setdefault(jid.bare, {})
        previous = resources.get(jid.resource)
        resources[jid.resource] = session
        return previous

    def remove(self, session: ClientSession) -> None:
        jid = session.jid
        resources = self._by_bare.get(jid.bare)
        if resources is None or jid.resource is None or resources.get(jid.resource) is not session:
            return
        del resources[jid.resource]
        if not resources:
            del self._by_bare[jid.bare]

    def get(self, full: JID) -> ClientSession | None:
        if full.resource is None:
            return None
        return self._by_bare.get(full.bare, {}).get(full.resource)

    def resources(self, bare: JID) -> list[ClientSession]:
        return list(self._by_bare.get(bare.bare, {}).values())

    def __iter__(self) -> Iterator[ClientSession]:
        for resources in list(self._by_bare.values()):
            yield from list(resources.values())

    def __len__(self) -> int:
        return sum(len(resources) for resources in self._by_bare.values())
