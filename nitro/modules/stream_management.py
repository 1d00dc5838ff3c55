"""Stream Management (XEP-0198 v1.6.3): the `<sm/>` stream feature, the sessions that may be resumed, the
end of detached ones whose window closed, and what becomes of stanzas a client never acknowledged (§4, §5).

The counting and the resumption handshake live in the session (nitro/c2s.py, nitro/sm.py); it fires
`sm-enabled`, `sm-resume`, `sm-detached`, `sm-resumed` and `sm-ended`, hooked here; and `c2s-unproven` (what a
client without it never proved it read, nitro/c2s/read_proof.py) shares §4's fallback.
"""

from __future__ import annotations

import asyncio
import copy
from typing import TYPE_CHECKING

from lxml import etree

from nitro.core.module import Module, ResumeRequest, SessionEvent, StreamFeaturesEvent, UnackedStanzas
from nitro.core.router import StanzaEvent
from nitro.modules.mam import MAM_QUERIED
from nitro.modules.mam_archive import SID
from nitro.modules.message import DELIVERY_PRIORITY, deliver_to_bare
from nitro.xmpp.errors import StanzaError, StreamError, error_reply
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.sm import SM, QueueBudget
from nitro.xmpp.stanza import child

if TYPE_CHECKING:
    from nitro.core.context import Session

CARBONS = "urn:xmpp:carbons:2"  # XEP-0280


def _archived_for(message: etree._Element, user: JID) -> bool:
    """The message carries the stanza-id our archive of `user` gave it (XEP-0359, XEP-0313 §5.1.1)."""
    by = str(user)
    return any(node.get("by") == by for node in message.findall(f"{{{SID}}}stanza-id"))


def _is_carbon_copy(message: etree._Element, user: JID) -> bool:
    """A carbon (XEP-0280 §6) wraps a message that reached its addressee elsewhere: nothing to re-deliver."""
    if message.get("from") not in (str(user.bare), None):
        return False
    return any(etree.QName(node).namespace == CARBONS for node in message if isinstance(node.tag, str))


def load(module: Module) -> None:
    server = module.server
    resumable: dict[str, Session] = {}  # resumption id → session, attached or detached
    expiries: dict[str, asyncio.Task[None]] = {}  # resumption id → the timer of a detached session
    # §4 leaves the bound of the queue to the server: per session (nitro/c2s/session.py) and, here, for
    # all sessions together, past which the one holding the most is closed
    budget = QueueBudget(lambda: server.config.stream_management.max_unacked_bytes_total)

    def join_budget(session: Session) -> None:
        sm = session.sm
        if sm is None or sm.budget is not None:
            return

        def cut() -> None:
            total = server.config.stream_management.max_unacked_bytes_total
            session.log.warning(
                "%d bytes unacknowledged, the most of any session: closing it", sm.unacked_bytes
            )
            error = StreamError(
                "resource-constraint", f"unacknowledged stanzas of all sessions passed {total} bytes"
            )
            server.spawn(session.close(error))

        budget.join(sm, cut)

    async def features(event: StreamFeaturesEvent) -> None:
        """§2: offered once the client is authenticated (to enable after binding, or to resume)."""
        if event.stream.authenticated:
            child(event.features, SM, "sm")

    async def enabled(event: SessionEvent) -> bool:
        join_budget(event.session)
        sm = event.session.sm
        if sm is not None and sm.resumable:
            resumable[sm.id] = event.session
        return True

    async def resume(request: ResumeRequest) -> bool:
        request.found = resumable.get(request.previd)
        return request.found is not None

    async def expire(session: Session, delay: float) -> None:
        await asyncio.sleep(delay)
        assert session.sm is not None
        expiries.pop(session.sm.id, None)
        if not session.detached:
            return
        session.log.info("not resumed within %.1f s; ending the session", delay)
        try:
            await session.close()
        except Exception:
            session.log.exception("ending the detached session failed")

    async def detached(event: SessionEvent) -> None:
        sm = event.session.sm
        assert sm is not None
        _cancel(sm.id)
        expiries[sm.id] = asyncio.create_task(expire(event.session, sm.resume_timeout))

    async def resumed(event: SessionEvent) -> None:
        assert event.session.sm is not None
        join_budget(event.session)  # a session restored from another process joins here
        _cancel(event.session.sm.id)

    async def moved(event: SessionEvent) -> None:
        """The session lives on another cluster member now (nitro/ops/resume_anywhere.py): forgotten here."""
        assert event.session.sm is not None
        _cancel(event.session.sm.id)
        if resumable.get(event.session.sm.id) is event.session:
            del resumable[event.session.sm.id]

    def _cancel(token: str) -> None:
        task = expiries.pop(token, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def ended(event: UnackedStanzas) -> None:
        """§4: "as if never delivered": messages go to another resource or offline storage, IQ requests
        are answered with an error, presence is dropped (the next session gets it again by probe).
        """
        session = event.session
        assert session.sm is not None
        _cancel(session.sm.id)
        resumable.pop(session.sm.id, None)
        if event.stanzas:
            session.log.info("%d stanzas were never acknowledged", len(event.stanzas))
        for stanza in event.stanzas:
            kind = etree.QName(stanza).localname
            try:
                if kind == "message":
                    await _undelivered_message(session, stanza)
                elif kind == "iq" and stanza.get("type") in ("get", "set"):
                    await _bounce(stanza, StanzaError("recipient-unavailable", "the recipient went offline"))
            except Exception:
                session.log.exception("unacknowledged %s %s not handled", kind, stanza.get("id"))

    async def unproven(event: UnackedStanzas) -> None:
        """A client without stream management was closed by the server before it proved it read these
        messages (nitro/c2s/read_proof.py): the same fate as §4's unacknowledged ones."""
        if event.stanzas:
            event.session.log.info("%d messages were never proven read", len(event.stanzas))
        for message in event.stanzas:
            try:
                await _undelivered_message(event.session, message)
            except Exception:
                event.session.log.exception("unproven message %s not handled", message.get("id"))

    async def _undelivered_message(session: Session, message: etree._Element) -> None:
        if _is_carbon_copy(message, session.jid):
            return
        if session.has_flag(MAM_QUERIED) and _archived_for(message, session.jid.bare):
            # A client that syncs from the archive gets it there; storing it offline as well would
            # deliver it twice (the rule of Prosody's mod_smacks with mod_mam).
            session.log.debug("unacknowledged message %s is in the archive; not re-stored", message.get("id"))
            return
        try:
            sender = JID.parse(message.get("from") or module.domain)
        except InvalidJID:
            return
        event = StanzaEvent(copy.deepcopy(message), None, sender, session.jid.bare, "bare", server)
        try:
            await server.bus.fire("sm-unacked/message", event)
        except StanzaError as error:
            await _bounce(message, error)

    async def redeliver(event: StanzaEvent) -> bool:
        """The default for `sm-unacked/message`, hooked low so carbons or an archive may claim a message
        (already copied to another resource, or kept in history) first: RFC 6121 §8.5.2 to the bare JID,
        now that the dead session is out of the registry, ending in offline storage (XEP-0160).
        """
        to = event.stanza.get("to") or ""
        await deliver_to_bare(event, addressed_to_full="/" in to)  # §8.5.3.2.1 for a full JID
        return True

    async def _bounce(stanza: etree._Element, error: StanzaError) -> None:
        if stanza.get("type") != "error" and stanza.get("from"):
            await server.router.route(error_reply(stanza, error))

    def unload() -> None:
        """Timers stop; a session still detached then ends now, so its queue is not forgotten (at shutdown
        the server has closed them all before modules unload)."""
        for task in expiries.values():
            task.cancel()
        expiries.clear()
        for session in resumable.values():
            if session.detached:
                server.spawn(session.close())
        resumable.clear()

    module.hook("stream-features", features)
    module.hook("sm-enabled", enabled)
    module.hook("sm-resume", resume)
    module.hook("sm-detached", detached)
    module.hook("sm-resumed", resumed)
    module.hook("sm-ended", ended)
    module.hook("c2s-unproven", unproven)
    module.hook("sm-moved", moved)
    module.hook("sm-unacked/message", redeliver, priority=DELIVERY_PRIORITY)
    module.on_unload(unload)
