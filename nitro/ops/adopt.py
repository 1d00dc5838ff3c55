"""Taking in a session exported by another process (an upgrade): registered as detached and resumable, so
its client's `<resume/>` (XEP-0198 §5) finds it here with its counters and unacknowledged stanzas."""

from __future__ import annotations

import contextvars
import logging
from typing import TYPE_CHECKING, Any

from lxml import etree

from nitro.c2s.session import ClientSession
from nitro.core.module import SessionEvent
from nitro.storage.errors import StorageError
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.sm import parse_stanza

if TYPE_CHECKING:
    from nitro.server import Server

log = logging.getLogger(__name__)

# Set while a stanza the other process sent is routed here: it is stored here if nobody takes it, never sent
# back (no ping-pong between the two processes of an upgrade).
FORWARDED: contextvars.ContextVar[bool] = contextvars.ContextVar("forwarded", default=False)


async def adopt(server: Server, data: dict[str, Any]) -> ClientSession:
    """Restore `data` (ClientSession.export) as a detached session of this process; raises ValueError,
    KeyError or an lxml error when the data cannot be a session."""
    session = ClientSession.restore(server, data)
    if session.sm is None or not session.sm.resumable:
        raise ValueError(f"session {session.id} is not resumable")
    previous = server.sessions.add(session)
    # a live login of the same resource here wins; a forwarding copy (this process handed it off) is replaced
    if isinstance(previous, ClientSession) and previous.forward is None and not previous.closed:
        server.sessions.add(previous)
        raise ValueError(f"{session.jid} is bound here already")
    server.track(session)
    await server.bus.fire("sm-enabled", SessionEvent(session))  # resumable by its id; its queue counted
    await server.bus.fire("sm-detached", SessionEvent(session))  # the resumption window runs from now
    if server.directory is not None:  # the cluster sees the session on this node now (nitro.core.directory)
        presence = None if session.presence is None else etree.tostring(session.presence, encoding="utf-8")
        try:
            await server.directory.put(session.jid, presence, session.priority)
        except StorageError as exc:  # the ring heals it at its next refresh
            session.log.warning("session directory not updated: %s", exc)
    session.log.info("adopted from another process (%d stanzas queued)", len(session.sm.unacked))
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
