"""The sessions one upgrade's drain hands to the successor: each is exported (XEP-0198 state, a BOSH
session's requests), its connection given a forwarder, and closed only once the successor says it adopted it;
one it refuses ends here, and if the successor dies they all come back (`take_back_all`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from lxml import etree

from nitro.c2s.session import ClientSession
from nitro.ops.adopt import adopt
from nitro.ops.forwarding import forwarder
from nitro.ops.handover import Channel, HandoverError
from nitro.ops.shadow import Journal
from nitro.transports import bosh_move

if TYPE_CHECKING:
    from nitro.server import Server

log = logging.getLogger(__name__)

BUSY_WAIT = 2.0  # seconds the drain waits for a session to finish handling an input before it retries it
SESSIONS_PER_MESSAGE = 50  # exported sessions per message on the upgrade socket (each well under its limit)


class Handoffs:
    """Sessions exported to the successor, by id, until it confirms (`adopted`) or refuses them."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.moved: dict[str, tuple[ClientSession, dict[str, Any], list[etree._Element]]] = {}
        self.waiting: dict[str, asyncio.Event] = {}  # set once the successor answered for the session

    async def move(
        self, channel: Channel, batch: list[ClientSession], journal: Journal | None, *, late: bool
    ) -> tuple[list[ClientSession], list[ClientSession]]:
        """Hand the resumable sessions of `batch` to the successor. Returns those that cannot move (to be
        closed) and those still handling an input (to be tried again; at the deadline (`late`) they are
        waited for, for at most BUSY_WAIT)."""
        exported: list[dict[str, Any]] = []
        retry: list[ClientSession] = []
        closing: list[ClientSession] = []
        for session in batch:
            if session.closed or session.forward is not None:
                continue
            bosh = bosh_move.carried_by_bosh(session)  # a BOSH session moves with or without XEP-0198
            if not bosh and (session.sm is None or not session.sm.resumable):
                closing.append(session)
                continue
            # exported 'h' must count every handled stanza; a BOSH request is not half handled
            if _settling(session) and not late:
                retry.append(session)
                continue
            await _until_idle(session)
            if bosh and bosh_move.settling(session):  # still inside a request at the deadline
                if session.sm is None or not session.sm.resumable:
                    closing.append(session)
                    continue
                bosh = False  # its BOSH session ends here; its client resumes (XEP-0198) on a new one
            if journal is not None:
                journal.moved(session)  # its export supersedes its shadow copy
            data = session.export()  # nothing awaited from here to hand_off: no stanza in between
            if bosh:
                data["bosh"] = bosh_move.hand_over(session)
            kept: list[etree._Element] = []
            forward = forwarder(self.server, channel, str(session.jid), kept)
            transport = session.hand_off(forward)
            self.moved[session.id] = (session, data, kept)
            self.waiting[session.id] = asyncio.Event()
            session.log.info("handed to the successor")
            self._close_later(session.id, transport)
            exported.append(data)
        for start in range(0, len(exported), SESSIONS_PER_MESSAGE):  # a deadline's batch can be every session
            await channel.send(
                {"type": "sessions", "sessions": exported[start : start + SESSIONS_PER_MESSAGE]}
            )
        return closing, retry

    def _close_later(self, session_id: str, transport: Any) -> None:
        """Close the old connection once the successor registered the session (ownership moved)."""

        async def close() -> None:
            event = self.waiting.get(session_id)
            if event is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), self.server.config.upgrade.ready_timeout)
            # no stream close (that would end the session, XEP-0198 §5): the client sees a lost connection
            getattr(transport, "abandon", transport.close)()

        self.server.spawn(close())

    def adopted(self, session_id: str) -> bool:
        """The successor registered the session: its old connection may close. False if it was not ours."""
        if session_id not in self.moved:
            return False
        event = self.waiting.get(session_id)
        if event is not None:
            event.set()
        return True

    def refused(self, session_id: str) -> ClientSession | None:
        """The successor would not take the session: it is registered here again (the caller ends it)."""
        moved = self.moved.pop(session_id, None)
        if moved is None:
            return None
        session = moved[0]
        session.log.warning("the successor refused the session; it ends here")
        event = self.waiting.pop(session_id, None)
        if event is not None:
            event.set()
        session.take_back()
        self.server.track(session)
        return session

    async def wait_adopted(self, reader: asyncio.Task[None], timeout: float) -> None:
        """Until the successor confirmed every session handed to it (or the reader ended: it went away)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while any(not event.is_set() for event in self.waiting.values()) and loop.time() < end:
            if reader.done():
                reader.result()
                raise HandoverError("the successor closed the upgrade socket")
            await asyncio.sleep(0.05)

    async def take_back_all(self) -> None:
        """The successor died: every session handed to it (confirmed or not) comes back here as detached, with
        what was forwarded to it meanwhile; their clients resume here."""
        for session_id, (session, data, kept) in list(self.moved.items()):
            self.server.sessions.remove(session)
            session.forward = None
            if isinstance(data.get("bosh"), dict):  # the successor may have answered requests we never saw
                data["bosh"] = {**data["bosh"], "rids_unknown": True}
            try:
                restored = await adopt(self.server, data)
            except Exception:
                log.exception("session %s could not be taken back", session_id)
                continue
            for stanza in kept:
                restored.send(stanza)
        self.moved.clear()
        self.waiting.clear()


def _settling(session: ClientSession) -> bool:
    return session.busy or session.acks_held > 0 or bosh_move.settling(session)


async def _until_idle(session: ClientSession) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + BUSY_WAIT
    while _settling(session) and loop.time() < end:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
