"""The session apart from its connection, a link of `ClientSession`'s chain of slotted bases: XEP-0198 §5
(detach when the connection is lost, `resume` on a new stream, `attach` to its transport), the session as
data (`export`; `ClientSession.restore` makes one from it) and its hand-off to a successor process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lxml import etree

from nitro.c2s.inputs import State
from nitro.c2s.read_proof import ReadProofs
from nitro.c2s.transport import NO_TRANSPORT, Transport
from nitro.core.module import SessionEvent
from nitro.observe.logs import SessionLog, enter_session
from nitro.xmpp.errors import StreamError
from nitro.xmpp.jid import JID
from nitro.xmpp.sm import ack_request, resumed

if TYPE_CHECKING:
    from nitro.core.context import Core


class Detachable(ReadProofs):
    """What a session is without its connection (see the module's docstring)."""

    __slots__ = ("forward", "lang", "mechanism", "state", "stream_id", "transport")

    id: str
    username: str | None
    server: Core

    def __init__(
        self, jid: JID, transport: Transport, *, stream_id: str, lang: str, mechanism: str | None
    ) -> None:
        ReadProofs.__init__(self, jid)
        self.transport = transport
        self.state = State.BINDING  # ESTABLISHED once `bind` or `resume` ran
        self.stream_id = stream_id
        self.lang = lang
        self.mechanism = mechanism  # the SASL mechanism that authenticated the stream
        # once the session moved to a successor process (nitro/ops/upgrade.py): what is sent to it goes there
        self.forward: Callable[[etree._Element], None] | None = None

    @property
    def extra(self) -> dict[str, object]:
        raise NotImplementedError  # the session's (nitro/observe/logs.py)

    @property
    def log(self) -> SessionLog:
        raise NotImplementedError  # the session's (made on demand)

    async def close(self, error: StreamError | None = None) -> None:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def export(self) -> dict[str, Any]:
        """Everything the session is, as JSON-able data; `restore` makes an equal session from it."""
        return {
            "id": self.id,
            "username": self.username,
            "mechanism": self.mechanism,
            "lang": self.lang,
            "state": self.state.value,
            **self.export_resource(),
            "sm": None if self.sm is None else self.sm.to_dict(),
        }

    def hand_off(self, forward: Callable[[etree._Element], None]) -> Transport:
        """The session moved to a successor process (its export is there): from now on input is ignored,
        what is sent to it goes to `forward`, and nothing ends (no unavailable presence, no §4 fallback).
        Returns the transport, which the caller closes once the successor has the session; input arriving
        before that ends the connection at once (its reader sees the stream is no longer its own), and
        the client's `<resume/>` then waits at the successor until the session arrives there."""
        transport, self.transport = self.transport, NO_TRANSPORT
        self.forward = forward
        self.state = State.CLOSED
        self.server.untrack(self)
        return transport

    def take_back(self) -> None:
        """The successor did not take the session (refused it, or died): it is this process's again, detached
        (its client resumes here, or its window closes and §4 applies)."""
        self.forward = None
        self.state = State.DETACHED

    def resumable_by(self, previd: str, user: JID) -> bool:
        """§5: `previd` names this session and the resuming stream authenticated as its user."""
        return (
            not self.closed
            and self.sm is not None
            and self.sm.id == previd
            and self.username == user.local
            and self.jid.bare == user.bare
        )

    async def resume(
        self, transport: Transport, h: int, *, stream_id: str, lang: str, mechanism: str | None
    ) -> None:
        """§5: continue on `transport`; resend what the client did not acknowledge."""
        assert self.sm is not None
        await self.acks_drained()  # 'h' of <resumed/> counts only what is durable
        self.sm.catch_up(
            h, self.server.config.stream_management.max_unacked
        )  # restored from an upgrade's shadow copy, which may lag by a loop turn
        self.sm.acknowledge(h)  # raises before any change if 'h' is impossible
        if self.state is State.ESTABLISHED:  # the old connection looks alive but the client has moved on
            self.log.info("resumed on another connection; closing this one")
            self._drop_transport(StreamError("conflict", "this session was resumed on another connection"))
        self.attach(transport, stream_id=stream_id, lang=lang, mechanism=mechanism)
        self.log.info("resumed (%d stanzas to resend)", len(self.sm.unacked))
        self.write_element(resumed(self.sm))
        for stanza in self.sm.unacked:
            self.transport.send(stanza)  # §5: what the client did not acknowledge, in order
        self.sm.ack_requested = False
        if self.sm.unacked:
            self.sm.ack_requested = True
            self.transport.send(ack_request())
        await self.server.bus.fire("sm-resumed", SessionEvent(self))

    # -- XEP-0198 §5: detached, resumed, attached to a new stream ---------------------------------------

    def attach(self, transport: Transport, *, stream_id: str, lang: str, mechanism: str | None) -> None:
        """§5: continue on `transport`, whose stream authenticated as this user and resumed this session."""
        self.transport = transport
        self.stream_id = stream_id
        self.lang = lang
        self.mechanism = mechanism
        self.reset_timers()
        self.state = State.ESTABLISHED
        self.server.track(self)
        enter_session(self)  # the resuming connection's task now works for this session

    def _drop_transport(self, error: StreamError | None) -> None:
        """Write a last error and close the transport, keeping the session."""
        transport, self.transport = self.transport, NO_TRANSPORT
        transport.close_stream(error)

    async def _detach(self) -> None:
        """§5: the connection is gone but the session stays bound and available; stanzas to it queue
        until a new stream resumes it or the stream_management module ends it when the window closes.
        """
        assert self.sm is not None
        self.state = State.DETACHED
        self.transport = NO_TRANSPORT
        sm = self.sm
        sm.jid = self.jid_text
        sm.priority = self.priority
        sm.presence = self.presence_xml
        sm.interested = self.interested
        sm.directed_to = tuple(sorted(str(jid) for jid in self.directed_to))
        sm.resume_deadline = time.time() + sm.resume_timeout
        self.log.info("connection lost; resumable for %.1f s", sm.resume_timeout)
        await self.server.bus.fire("sm-detached", SessionEvent(self))

    @property
    def detached(self) -> bool:
        """Bound and waiting for a stream to resume it (XEP-0198 §5)."""
        return self.state is State.DETACHED

    @property
    def resumable(self) -> bool:
        return self.state is State.ESTABLISHED and self.sm is not None and self.sm.resumable
