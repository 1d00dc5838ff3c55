"""Keeps this node's sessions in the session directory (`nitro.core.directory`): bound resources with their
presence, refreshed in the Redis ring (or kept in memory without one)."""

from __future__ import annotations

import secrets

from nitro.core.directory import SessionDirectory
from nitro.core.module import Module, SessionEvent


def load(module: Module) -> None:
    server = module.server
    tiers = server.tiers
    ring = tiers.ring if tiers is not None else None
    node_id = server.config.cluster.node or (tiers.node_id if tiers is not None else secrets.token_hex(8))
    directory = SessionDirectory(ring, node_id, server.config.redis.session_ttl)
    server.directory = directory
    module.spawn(directory.run())

    async def on_bind(event: SessionEvent) -> None:
        await directory.put(event.session.jid, None)

    async def on_presence(event: SessionEvent) -> None:
        """`presence-changed` (fired by the presence module): available with its stanza, or not."""
        session = event.session
        if session.closed:
            return
        await directory.put(session.jid, session.presence_xml, session.priority)

    async def on_unbind(event: SessionEvent) -> None:
        await directory.remove(event.session.jid)

    def unload() -> None:
        if server.directory is directory:
            server.directory = None

    module.hook("resource-bind", on_bind)
    module.hook("presence-changed", on_presence)
    module.hook("resource-unbind", on_unbind, priority=-1000)  # after unavailable presence went out
    module.on_unload(unload)
