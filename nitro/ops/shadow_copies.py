"""The successor's side of an upgrade's shadow copies (nitro/ops/shadow.py): the sessions still in the old
process as plain export data, kept current by its journal. If the old process dies before its drain is done,
`take_over` promotes each resumable copy to a detached session here (its client's `<resume/>` finds it, with
what it had not acknowledged) and ends the others as a lost connection would: unavailable presence to their
contacts, out of the session directory, what stream management had not seen acknowledged to §4's fallback.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from nitro.c2s.session import ClientSession
from nitro.core.module import UnackedStanzas
from nitro.ops.adopt import adopt
from nitro.xmpp.jid import JID, InvalidJID

if TYPE_CHECKING:
    from nitro.server import Server

log = logging.getLogger(__name__)


class ShadowCopies:
    """Session id → its copy (ClientSession.export data; the queue as a deque of serialised stanzas)."""

    def __init__(self) -> None:
        self._copies: dict[str, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._copies)

    def add(self, sessions: list[dict[str, Any]]) -> list[str]:
        """New copies (replacing any of the same id); returns their full JIDs."""
        jids: list[str] = []
        for data in sessions:
            session_id, jid, sm = data.get("id"), data.get("jid"), data.get("sm")
            if not isinstance(session_id, str) or not isinstance(jid, str):
                log.warning("upgrade: a shadow copy without id or jid ignored")
                continue
            if isinstance(sm, dict):
                sm["unacked"] = deque(str(stanza) for stanza in sm.get("unacked", ()))
            self._copies[session_id] = data
            jids.append(jid)
        return jids

    def drop(self, session_id: str) -> None:
        self._copies.pop(session_id, None)

    def drop_jid(self, jid: str) -> None:
        for session_id in [key for key, data in self._copies.items() if data.get("jid") == jid]:
            del self._copies[session_id]

    def clear(self) -> None:
        self._copies.clear()

    def apply(self, entries: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
        """One journal message (checked by nitro/ops/handover.py); returns the full JIDs bound and ended."""
        bound: list[str] = []
        ended: list[str] = []
        for entry in entries:
            op = entry["op"]
            if op == "bound":
                bound.extend(self.add([entry["session"]]))
                continue
            if op == "ended":
                self._copies.pop(entry["id"], None)
                ended.append(entry["jid"])
                continue
            data = self._copies.get(entry["id"])
            if data is None:
                continue  # moved or ended meanwhile: its export or end came first
            if op == "resource":
                data.update({key: value for key, value in entry["resource"].items() if key != "jid"})
            elif op == "sm" and isinstance(sm := data.get("sm"), dict):
                queue: deque[str] = sm["unacked"]
                queue.extend(entry["stanzas"])
                while len(queue) > entry["queued"]:
                    queue.popleft()
                sm["h_in"], sm["h_out"] = entry["h_in"], entry["h_out"]
        return bound, ended

    async def take_over(self, server: Server) -> tuple[list[ClientSession], int]:
        """The old process died mid-drain: resumable copies become detached sessions here (returned), the
        others end (counted)."""
        promoted: list[ClientSession] = []
        ended = 0
        copies, self._copies = self._copies, {}
        gone: list[dict[str, Any]] = []  # ended after every promotion: their unavailable reaches those too
        for data in copies.values():
            sm = data.get("sm")
            if isinstance(sm, dict):
                sm["unacked"] = list(sm["unacked"])
            try:
                jid = JID.parse(str(data["jid"]))
            except (InvalidJID, KeyError) as exc:
                log.warning("upgrade: shadow copy %s unusable: %s", data.get("id"), exc)
                continue
            live = server.sessions.get(jid)  # its client logged in here again already
            if live is not None and (not isinstance(live, ClientSession) or live.forward is None):
                await self._end_quietly(server, data)
                ended += 1
                continue
            if isinstance(sm, dict) and sm.get("id") and float(sm.get("resume_timeout", 0)) > 0:
                try:
                    session = await adopt(server, data)
                except Exception as exc:
                    log.warning("upgrade: shadow copy %s not adopted: %r", data.get("id"), exc)
                else:
                    if session.sm is not None:
                        session.sm.lagging = True  # a loop turn of the dead process may be missing
                    promoted.append(session)
                    continue
            gone.append(data)
        for data in gone:
            await self._end(server, data)
            ended += 1
        return promoted, ended

    async def _end(self, server: Server, data: dict[str, Any]) -> None:
        """As if its connection was lost without resumption: `resource-unbind` (unavailable presence to its
        contacts, locally and through the cluster; out of the directory), XEP-0198 §4 for its queue."""
        try:
            session = ClientSession.restore(server, data)
        except Exception as exc:
            log.warning("upgrade: shadow copy %s unusable: %r", data.get("id"), exc)
            return
        try:
            await session.close()  # detached: it just ends
        except Exception:
            session.log.exception("ending the session of the dead process failed")
        session.log.info("was in the process that died mid-drain; ended (unavailable sent)")

    async def _end_quietly(self, server: Server, data: dict[str, Any]) -> None:
        """Its resource is bound here again: only its unacknowledged stanzas go where §4 sends them (its new
        session among the candidates); no unavailable presence for a resource that is online."""
        try:
            session = ClientSession.restore(server, data)
        except Exception as exc:
            log.warning("upgrade: shadow copy %s unusable: %r", data.get("id"), exc)
            return
        if session.sm is not None and session.sm.unacked:
            stanzas = session.sm.take_unacked()
            await server.bus.fire("sm-ended", UnackedStanzas(session, stanzas))
