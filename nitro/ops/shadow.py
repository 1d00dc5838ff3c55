"""The old process's side of an upgrade's shadow copies: once the drain starts, the successor gets an export
of every session still here (`shadow`), then a `journal` of what changes them — stanzas queued unacknowledged
(as written), acknowledgements, the inbound count, presence and the rest of the resource, a session ended
or bound — one message per loop turn. If this process is killed mid-drain, the successor adopts from its
copies what was still here (nitro/ops/shadow_copies.py). A session's entry goes when it moves or ends.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lxml import etree

from nitro.c2s.session import ClientSession
from nitro.core.module import SessionEvent
from nitro.ops.handover import Channel, HandoverError
from nitro.xmpp.sm import MAX_SEQ

if TYPE_CHECKING:
    from nitro.server import Server

log = logging.getLogger(__name__)

SESSIONS_PER_MESSAGE = 50
RESOURCE_SWEEP = 1.0  # seconds between looks at resource state no event announces (directed presence, slots)


class _Seen:
    """What the successor's copy of one session holds, as far as this process told it."""

    __slots__ = ("h_in", "h_out", "queued", "resource")

    def __init__(self, session: ClientSession) -> None:
        sm = session.sm
        self.h_in = 0 if sm is None else sm.h_in
        self.h_out = 0 if sm is None else sm.h_out
        self.queued = 0 if sm is None else len(sm.unacked)
        self.resource = session.export_resource()


class Journal:
    """Shadow copies of this process's sessions, kept in the successor while the drain runs."""

    def __init__(self, server: Server, channel: Channel) -> None:
        self.server = server
        self.channel = channel
        self._seen: dict[str, tuple[ClientSession, _Seen]] = {}
        self._dirty: dict[str, ClientSession] = {}
        self._entries: list[dict[str, Any]] = []
        self._flush_due = False
        self._undo: list[Callable[[], None]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self.stopped = False

    async def start(self, sessions: list[ClientSession]) -> None:
        """Send the first copies; from now on changes are journaled."""
        bus = self.server.bus
        self._undo = [
            bus.add("resource-bind", self._on_bind, priority=-2000),
            bus.add("sm-enabled", self._on_bind, priority=-2000),
            bus.add("presence-changed", self._on_change, priority=-2000),
            bus.add("resource-unbind", self._on_unbind, priority=-2000),
        ]
        self._flush_due = True  # no journal before every copy it changes was sent
        exported = [self._follow(session) for session in sessions]
        for start in range(0, len(exported), SESSIONS_PER_MESSAGE):
            await self.channel.send(
                {"type": "shadow", "sessions": exported[start : start + SESSIONS_PER_MESSAGE]}
            )
        self._flush_due = False
        if self._entries or self._dirty:
            self._schedule()
        self._sweeper = asyncio.create_task(self._sweep())
        log.info("upgrade: %d sessions shadowed in the successor", len(exported))

    def stop(self) -> None:
        """The drain is over (or failed): nothing more is journaled."""
        self.stopped = True
        for undo in self._undo:
            undo()
        self._undo.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for session, _seen in self._seen.values():
            if session.sm is not None:
                session.sm.watch = None
        self._seen.clear()
        self._dirty.clear()

    def moved(self, session: ClientSession) -> None:
        """The session moves for real (its export follows): its copy is superseded, nothing more journaled."""
        self._forget(session)

    @property
    def size(self) -> int:
        return len(self._seen)

    # -- following sessions ---------------------------------------------------------------------------

    def _follow(self, session: ClientSession) -> dict[str, Any]:
        self._seen[session.id] = (session, _Seen(session))
        if session.sm is not None:
            session.sm.watch = lambda: self._touch(session)
        return session.export()

    def _forget(self, session: ClientSession) -> None:
        if self._seen.pop(session.id, None) is not None and session.sm is not None:
            session.sm.watch = None
        self._dirty.pop(session.id, None)

    def _touch(self, session: ClientSession) -> None:
        if self.stopped or session.id not in self._seen:
            return
        self._dirty[session.id] = session
        self._schedule()

    def _schedule(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _on_bind(self, event: SessionEvent) -> None:
        """Bound here during the drain (or stream management enabled): a new copy replaces any."""
        session = event.session
        if self.stopped or not isinstance(session, ClientSession) or session.forward is not None:
            return
        self._dirty.pop(session.id, None)
        self._entries.append({"op": "bound", "session": self._follow(session)})
        self._schedule()

    async def _on_change(self, event: SessionEvent) -> None:
        if isinstance(event.session, ClientSession):
            self._touch(event.session)

    async def _on_unbind(self, event: SessionEvent) -> None:
        session = event.session
        if self.stopped or not isinstance(session, ClientSession) or session.id not in self._seen:
            return
        self._forget(session)
        self._entries.append({"op": "ended", "id": session.id, "jid": str(session.jid)})
        self._schedule()

    async def _sweep(self) -> None:
        """Resource changes no event announces reach the copies within RESOURCE_SWEEP."""
        while True:
            await asyncio.sleep(RESOURCE_SWEEP)
            for session, seen in list(self._seen.values()):
                if session.export_resource() != seen.resource:
                    self._touch(session)

    # -- one journal message per loop turn --------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_due = False
        if self.stopped:
            return
        entries, self._entries = self._entries, []
        for session in self._dirty.values():
            entries.extend(self._changes(session))
        self._dirty.clear()
        if entries:
            self.server.spawn(self._send({"type": "journal", "entries": entries}))

    def _changes(self, session: ClientSession) -> list[dict[str, Any]]:
        followed = self._seen.get(session.id)
        if followed is None or session.forward is not None:
            return []
        seen = followed[1]
        entries: list[dict[str, Any]] = []
        sm = session.sm
        if sm is not None and (sm.h_in, sm.h_out, len(sm.unacked)) != (seen.h_in, seen.h_out, seen.queued):
            new = min((sm.h_out - seen.h_out) % MAX_SEQ, len(sm.unacked))
            newest = list(itertools.islice(reversed(sm.unacked), new))  # the queue's tail, not all of it
            stanzas = [etree.tostring(stanza, encoding="unicode") for stanza in reversed(newest)]
            entries.append(
                {
                    "op": "sm",
                    "id": session.id,
                    "h_in": sm.h_in,
                    "h_out": sm.h_out,
                    "queued": len(sm.unacked),
                    "stanzas": stanzas,
                }
            )
            seen.h_in, seen.h_out, seen.queued = sm.h_in, sm.h_out, len(sm.unacked)
        resource = session.export_resource()
        if resource != seen.resource:
            entries.append({"op": "resource", "id": session.id, "resource": resource})
            seen.resource = resource
        return entries

    async def _send(self, message: dict[str, Any]) -> None:
        try:
            await self.channel.send(message)
        except HandoverError as exc:  # the drain sees the successor gone on its own
            log.warning("upgrade: journal not sent: %s", exc)
