"""XEP-0198 resumption anywhere in the cluster (what ejabberd's clustered mod_stream_mgmt gives): a
`<resume/>` for a session this member (node, or worker "<node>-w<i>") does not hold asks the members that
hold resources of the user (the cluster's view) over NATS to hand it over.

The owner checks the previd and the user (never hands a session to another user), exports the session as an
upgrade does (ClientSession.export) and stops it without unavailable presence; what reaches it meanwhile is
kept. The asker adopts it (nitro/ops/adopt.py: registry, directory, announcement), confirms, and resumes it
here; on the confirmation the owner sends what it kept, then everything later, after it over the cluster's
ordered per-member queue, and forgets it a little later (stale routes elsewhere still reach it meanwhile).
No answer within TAKE_TIMEOUT, an owner that is gone or refuses: `<failed><item-not-found/>` as before. No
confirmation within CONFIRM_TIMEOUT: the owner takes the session back (detached, its window running).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lxml import etree

from nitro.c2s.inputs import State
from nitro.c2s.session import ClientSession
from nitro.cluster.link import LinkDown
from nitro.cluster.wire import WireError, decode, encode, stanza_text, subject_of
from nitro.core.module import ResumeRequest, SessionEvent
from nitro.ops.adopt import adopt
from nitro.transports.bosh_move import carried_by_bosh
from nitro.xmpp.jid import JID, InvalidJID

if TYPE_CHECKING:
    from nitro.cluster.node import Cluster
    from nitro.server import Server

log = logging.getLogger(__name__)

TAKE_TIMEOUT = 3.0  # seconds a resuming client waits for another member to hand its session over
CONFIRM_TIMEOUT = 10.0  # the owner takes a handed-over session back when the asker never confirms
STUB_GRACE = 10.0  # the owner forwards to the new owner this long after the confirmation
BUSY_WAIT = 1.0  # at most this long for an input being handled (its 'h' must be in the export)
SM_MOVED = "sm-moved"  # SessionEvent: the session lives on another member now (stream_management forgets it)


@dataclass(slots=True)
class _Handed:
    """A session exported to `to`, waiting for its confirmation."""

    session: ClientSession
    to: str
    kept: list[etree._Element] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class ResumeAnywhere:
    """Both sides of moving a detached (or seemingly attached) session between cluster members."""

    def __init__(self, server: Server, cluster: Cluster) -> None:
        self.server = server
        self.cluster = cluster
        self._handed: dict[str, _Handed] = {}  # session id → exported, not yet confirmed
        self.pulled = 0
        self.handed = 0

    def install(self) -> Callable[[], None]:
        self.cluster.handlers["sm-take"] = self._on_take
        self.cluster.handlers["sm-taken"] = self._on_taken
        undo = self.server.bus.add("sm-resume", self._pull, priority=-900)

        def uninstall() -> None:
            undo()
            self.cluster.handlers.pop("sm-take", None)
            self.cluster.handlers.pop("sm-taken", None)
            for handed in list(self._handed.values()):
                self._take_back(handed, "this member stops")

        return uninstall

    # -- the member the client resumes at ---------------------------------------------------------------

    async def _pull(self, request: ResumeRequest) -> bool:
        if request.found is not None or not request.previd:
            return False
        owners = sorted({resource.node for resource in self.cluster.view.resources(request.user.bare)})
        for owner in owners:
            session = await self._take_from(owner, request)
            if session is not None:
                request.found = session
                return True
        return False

    async def _take_from(self, owner: str, request: ResumeRequest) -> ClientSession | None:
        ask = {"t": "sm-take", "previd": request.previd, "user": str(request.user), "to": self.cluster.node}
        try:
            reply = decode(await self._request(owner, ask, TAKE_TIMEOUT))
        except (LinkDown, WireError) as exc:
            log.info("resume: %s did not hand a session over: %s", owner, exc)
            return None
        data = reply.get("session")
        if reply.get("r") != "ok" or not isinstance(data, dict):
            return None
        session_id = str(data.get("id", ""))
        try:
            session = await adopt(self.server, data)
        except Exception as exc:
            log.warning("resume: session %s from %s not adopted: %r", session_id, owner, exc)
            await self._confirm(owner, session_id, ok=False)
            return None
        if not await self._confirm(owner, session_id, ok=True):
            # the owner takes it back (it never heard we have it): one owner, never two
            self._forget(session)
            return None
        self.cluster.adopted(session)
        self.pulled += 1
        session.log.info("taken over from %s to be resumed here", owner)
        return session

    async def _confirm(self, owner: str, session_id: str, *, ok: bool) -> bool:
        try:
            reply = decode(await self._request(owner, {"t": "sm-taken", "id": session_id, "ok": ok}, 2.0))
        except (LinkDown, WireError) as exc:
            log.warning("resume: %s not told about session %s: %s", owner, session_id, exc)
            return False
        return reply.get("r") == "ok"

    async def _request(self, member: str, message: dict[str, Any], timeout: float) -> bytes:
        subject = subject_of(self.cluster.settings.name, member)
        return await self.cluster.link.request(subject, encode(message), timeout)

    # -- the member that holds the session ---------------------------------------------------------------

    async def _on_take(self, request: dict[str, Any]) -> dict[str, Any]:
        previd, to = str(request.get("previd", "")), str(request.get("to", ""))
        try:
            user = JID.parse(str(request.get("user", "")))
        except InvalidJID:
            return {"r": "not-found"}
        session = self._find(previd, user)
        if session is None:
            return {"r": "not-found"}
        loop = asyncio.get_running_loop()
        end = loop.time() + BUSY_WAIT
        while (session.busy or session.acks_held > 0) and loop.time() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._find(previd, user) is not session or session.busy or session.acks_held > 0:
            return {"r": "not-found"}  # resumed or ended meanwhile, or still busy
        data = session.export()  # nothing awaited from here to hand_off: no stanza in between
        handed = _Handed(session, to)
        transport = session.hand_off(handed.kept.append)
        getattr(transport, "abandon", transport.close)()  # no stream close: that would end it (§5)
        handed.timer = loop.call_later(CONFIRM_TIMEOUT, self._take_back, handed, "no confirmation")
        self._handed[session.id] = handed
        session.log.info("handed over to %s, where its client resumes", to)
        return {"r": "ok", "session": data}

    def _find(self, previd: str, user: JID) -> ClientSession | None:
        """The session `previd` names, resumable by `user` and carried by no BOSH session (which moves with
        its own sid in upgrades only)."""
        for session in self.server.sessions.sessions_of(user.bare):
            if (
                isinstance(session, ClientSession)
                and session.forward is None
                and session.resumable_by(previd, user)
                and not carried_by_bosh(session)
            ):
                return session
        return None

    async def _on_taken(self, request: dict[str, Any]) -> dict[str, Any]:
        handed = self._handed.pop(str(request.get("id", "")), None)
        if handed is None:
            return {"r": "unknown"}  # taken back already: the asker drops its copy
        if handed.timer is not None:
            handed.timer.cancel()
        if not request.get("ok"):
            self._take_back(handed, "the other member did not adopt it")
            return {"r": "ok"}
        session, jid, forwarder = handed.session, handed.session.jid, self.cluster.forwarder

        def forward(element: etree._Element) -> None:
            forwarder.forward(handed.to, jid, stanza_text(element))

        session.forward = forward
        self.cluster.moved_out.add(id(session))  # announced by its new owner only
        for element in handed.kept:  # in the order they came, before anything later
            forward(element)
        self.handed += 1
        asyncio.get_running_loop().call_later(STUB_GRACE, self._forget, session)
        return {"r": "ok"}

    def _take_back(self, handed: _Handed, why: str) -> None:
        self._handed.pop(handed.session.id, None)
        if handed.timer is not None:
            handed.timer.cancel()
        session = handed.session
        session.take_back()
        self.server.track(session)  # closed at shutdown, its timers run again
        assert session.sm is not None
        for element in handed.kept:  # queued again, unacknowledged, for its client's next resume
            session.send(element)
        session.log.info("hand-over to %s undone (%s): detached here again", handed.to, why)
        self.server.spawn(self.server.bus.notify("sm-detached", SessionEvent(session)))

    def _forget(self, session: ClientSession) -> None:
        """The session is another member's: out of this member's registry, without unbinding it."""
        session.forward = None
        self.cluster.moved_out.discard(id(session))
        session.state = State.CLOSED
        self.server.sessions.remove(session)
        self.server.untrack(session)
        session.watch_flags(None)
        self.server.spawn(self.server.bus.notify(SM_MOVED, SessionEvent(session)))
