"""Taking in a session exported by another process (an upgrade): registered as detached and resumable, so
its client's `<resume/>` (XEP-0198 §5) finds it here with its counters and unacknowledged stanzas; a session
carried by BOSH comes with its BOSH state and goes on under the same sid (nitro/transports/bosh_move.py)."""

from __future__ import annotations

import contextvars
import logging
from typing import TYPE_CHECKING, Any

from lxml import etree

from nitro.c2s.session import ClientSession
from nitro.core.module import SessionEvent
from nitro.storage.errors import StorageError
from nitro.transports.bosh_move import BOSH_ARRIVAL, BoshArrival
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.sm import parse_stanza

if TYPE_CHECKING:
    from nitro.server import Server

log = logging.getLogger(__name__)

# Set while a stanza the other process sent is routed here: it is stored here if nobody takes it, never sent
# back (no ping-pong between the two processes of an upgrade).
FORWARDED: contextvars.ContextVar[bool] = contextvars.ContextVar("forwarded", default=False)


async def adopt(server: Server, data: dict[str, Any]) -> ClientSession:
    """Restore `data` (ClientSession.export) as a detached session of this process (with BOSH state: one
    established on its BOSH session again, same sid); raises ValueError, KeyError or an lxml error when the
    data cannot be a session."""
    session = ClientSession.restore(server, data)
    bosh = data.get("bosh")
    if bosh is None and (session.sm is None or not session.sm.resumable):
        raise ValueError(f"session {session.id} is not resumable")
    previous = server.sessions.get(session.jid)
    # a live login of the same resource here wins; a forwarding copy (this process handed it off) is replaced
    if isinstance(previous, ClientSession) and previous.forward is None and not previous.closed:
        raise ValueError(f"{session.jid} is bound here already")
    if bosh is not None:  # attached to its BOSH session again, under the same sid: established, not detached
        arrival = BoshArrival(session, dict(bosh))
        await server.bus.fire(BOSH_ARRIVAL, arrival)
        if not arrival.taken:
            raise ValueError(f"session {session.id} came with BOSH state but BOSH is not served here")
    server.sessions.add(session)
    server.track(session)
    if session.sm is not None:
        await server.bus.fire("sm-enabled", SessionEvent(session))  # resumable by its id; its queue counted
    if bosh is None:
        await server.bus.fire("sm-detached", SessionEvent(session))  # the resumption window runs from now
    if server.directory is not None:  # the cluster sees the session on this node now (nitro.core.directory)
        try:
            await server.directory.put(session.jid, session.presence_xml, session.priority)
        except StorageError as exc:  # the ring heals it at its next refresh
            session.log.warning("session directory not updated: %s", exc)
    queued = 0 if session.sm is None else len(session.sm.unacked)
    carried = "over BOSH, same sid" if bosh is not None else "detached"
    session.log.info("adopted from another process (%s; %d stanzas queued)", carried, queued)
    return session


async def deliver_forwarded(server: Server, to: str, stanza_xml: str) -> None:
    """A stanza the other process received for a session that is here now: to that session, or routed
    (to another resource or offline storage, RFC 6121 §8) when it has gone meanwhile."""
    try:
        stanza = parse_stanza(stanza_xml.encode())
        jid = JID.parse(to)
    except (etree.XMLSyntaxError, InvalidJID) as exc:
        log.warning("forwarded stanza for %r unreadable: %s", to, exc)
        return
    session = server.sessions.get(jid)
    if isinstance(session, ClientSession) and session.forward is None and not session.closed:
        session.send(stanza)
        return
    token = FORWARDED.set(True)
    try:
        await server.router.route(stanza)
    finally:
        FORWARDED.reset(token)
