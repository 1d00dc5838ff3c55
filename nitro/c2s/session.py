"""A bound client session: the resource other users reach, apart from the stream that bound it (RFC 6120 §7).

It holds the JID, presence and priority, the modules' typed slots and, with Stream Management (XEP-0198),
the counters and the queue of unacknowledged elements. It survives the loss of its transport (DETACHED),
`attach`es to the transport of a stream that resumes it, and exports to plain data and back.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from lxml import etree

from nitro.c2s import acks
from nitro.c2s.ack_gate import HeldAcks
from nitro.c2s.detachable import Detachable
from nitro.c2s.inputs import State, counted, input_name
from nitro.c2s.keepalive import Keepalive
from nitro.c2s.transport import NO_TRANSPORT, Transport
from nitro.core import durability
from nitro.core.module import NonzaEvent, SessionEvent, UnackedStanzas
from nitro.observe.logs import SessionLog
from nitro.xmpp import ns
from nitro.xmpp.errors import StanzaError, StreamError, error_reply
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.sm import (
    SmState,
    ack,
    ack_request,
    is_stanza,
)
from nitro.xmpp.xmlstream import StreamClosed, StreamEvent, StreamOpened

if TYPE_CHECKING:
    from nitro.core.context import Core

log = logging.getLogger("nitro.c2s.stream")

_XML_LANG = f"{{{ns.XML}}}lang"


class ClientSession(Detachable):  # through its chain of slotted bases: ReadProofs, ResourceState, HeldAcks…
    """One bound resource: stamps 'from' on what its client sends and hands it to the router; receives
    what is delivered to it."""

    # Slots, not a dict per session (idle memory, issue 16).
    __slots__ = (
        "__weakref__",  # the admin channel remembers when each session bound (a WeakKeyDictionary)
        "_ending",
        "authenticated",
        "busy",
        "closed_with",
        "config",
        "id",
        "resumed",
        "server",
        "sm",
        "username",
    )

    def __init__(
        self,
        server: Core,
        transport: Transport,
        jid: JID,
        *,
        stream_id: str = "",
        lang: str = "en",
        mechanism: str | None = None,
    ) -> None:
        self.server = server
        self.id = f"c2s-{secrets.token_hex(6)}"
        self.config = server.config.c2s
        self.authenticated = True
        self.username: str | None = jid.local
        Detachable.__init__(self, jid, transport, stream_id=stream_id, lang=lang, mechanism=mechanism)
        Keepalive.__init__(self, self.config)
        self.sm: SmState | None = None  # Stream Management (XEP-0198), once enabled
        HeldAcks.__init__(self)
        self.resumed: ClientSession | None = None  # set when this stream resumed that session (XEP-0198 §5)
        self._ending = False  # a close is scheduled (too many unacknowledged stanzas)
        self.closed_with: str | None = None  # the stream error the session was closed with, for the log
        self.busy = False  # handling an input: an upgrade exports the session only between inputs

    def __repr__(self) -> str:
        return f"<ClientSession {self.id} {self.jid} {self.state.value}>"

    @property
    def extra(self) -> dict[str, object]:
        """What names the session in its log lines: its id and JID (nitro/observe/logs.py)."""
        return {"session": self.id, "jid": self._jid}

    @property
    def log(self) -> SessionLog:
        """A logger naming this session, made when something is logged: an adapter (and its dict) per idle
        session would cost some 400 bytes each (issue 16)."""
        return SessionLog(log, self.extra)

    # -- the session as data (its export: nitro/c2s/detachable.py) -----------------------------------

    @classmethod
    def restore(cls, server: Core, data: dict[str, Any]) -> ClientSession:
        """A session from `export()` data, without a connection (DETACHED if it was bound): the caller
        registers it and a resuming stream `attach`es to it. Slots no loaded module declares are dropped."""
        mechanism = data.get("mechanism")
        session = cls(
            server,
            NO_TRANSPORT,
            JID.parse(str(data["jid"])),
            lang=str(data.get("lang") or "en"),
            mechanism=None if mechanism is None else str(mechanism),
        )
        session.id = str(data["id"])
        session.username = None if data.get("username") is None else str(data["username"])
        state = State(data.get("state", State.DETACHED.value))
        session.state = State.DETACHED if state in (State.ESTABLISHED, State.DETACHED) else state
        for name in session.restore_resource(data, server.slots):
            session.log.warning("session state %r has no module here to take it; dropped", name)
        sm = data.get("sm")
        session.sm = None if sm is None else SmState.from_dict(sm)
        return session

    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED

    # -- elements in -----------------------------------------------------------------------------

    async def receive(self, event: StreamEvent) -> None:
        """One event from the transport; raises StreamError for the connection to close with."""
        if self.closed:
            return
        if isinstance(event, StreamOpened):
            raise StreamError("invalid-xml", "unexpected stream header")
        if isinstance(event, StreamClosed):
            await self.close()
            return
        element = event.element
        self.server.metrics.stanza_received(element.tag)
        name = input_name(element)
        action = _TRANSITIONS.get((self.state, name))
        if action is None:
            what = name if name != "nonza" else etree.QName(element).localname
            raise StreamError("policy-violation", f"{what} is not allowed in state {self.state.value}")
        self.busy = True
        try:
            if not counted(name) or self.sm is None:
                await action(self, element)
                return
            with durability.collecting() as promises:
                await action(self, element)
            if not self.closed:
                self._handled(promises)  # XEP-0198 §4: counted once handled (and what it stored is durable)
        finally:
            self.busy = False

    # -- binding (RFC 6120 §7) and resumption (XEP-0198 §5), called by the negotiation --------------------

    async def bind(self, iq: etree._Element) -> None:
        """Register as the resource; a session bound to the same full JID is replaced (§7.7.2.2)."""
        previous = self.server.sessions.add(self)
        if previous is not None:  # the new session wins, the old one is told why
            await previous.close(StreamError("conflict", "replaced by a new session with this resource"))
        result = etree.Element("iq", type="result")
        if iq.get("id") is not None:
            result.set("id", iq.get("id") or "")
        bind = etree.SubElement(result, f"{{{ns.BIND}}}bind", nsmap=ns.default_ns(ns.BIND))
        etree.SubElement(bind, f"{{{ns.BIND}}}jid").text = self.jid_text
        self.send(result)
        self.state = State.ESTABLISHED
        self.server.track(self)
        await self.server.bus.fire("resource-bind", SessionEvent(self))

    # -- negotiation ------------------------------------------------------------------------------

    async def _on_nonza(self, element: etree._Element) -> bool:
        """A top-level element that is no stanza (XEP-0198 `<r/>`, XEP-0352 `<active/>`, …): modules
        hook `c2s-nonza/<ns>:<name>` with a NonzaEvent; nothing claiming it is a stream error."""
        name = etree.QName(element)
        if not await self.server.bus.fire(
            f"c2s-nonza/{name.namespace}:{name.localname}", NonzaEvent(self, element)
        ):
            raise StreamError(
                "unsupported-stanza-type", f"<{name.localname} xmlns='{name.namespace}'/> is not supported"
            )
        return False

    async def _on_second_bind(self, iq: etree._Element) -> bool:
        self.send(error_reply(iq, StanzaError("not-allowed", "this stream already has a resource")))
        return False

    # -- established ------------------------------------------------------------------------------

    async def _on_stanza(self, stanza: etree._Element) -> bool:
        """Stamp 'from' with the session's full JID (RFC 6120 §8.1.2.1) and route."""
        jid_text = self.jid_text
        claimed = stanza.get("from")
        if claimed is not None and claimed != jid_text:
            try:
                claimed_jid = JID.parse(claimed)
            except InvalidJID as exc:
                raise StreamError("invalid-from", f"'from' is not a JID: {exc}") from exc
            if claimed_jid not in (self.jid, self.jid.bare):
                raise StreamError("invalid-from", "'from' does not match the authenticated JID")
        stanza.set("from", jid_text)
        if stanza.get(_XML_LANG) is None:
            stanza.set(_XML_LANG, self.lang)  # RFC 6120 §4.7.4
        if self.is_ping_reply(stanza):
            self.ping_answered()
            return False
        await self.server.router.route(stanza, origin=self)
        return False

    # -- bytes out --------------------------------------------------------------------------------

    def send(self, element: etree._Element) -> None:
        """Send a stanza or nonza, unless an outbound filter (e.g. CSI, XEP-0352) holds it back."""
        if self.forward is not None:
            self.forward(element)  # the session lives in a successor process now
            return
        if self.closed:
            return
        for outbound_filter in self.slots.filters:
            if not outbound_filter.keep(element):
                return
        self.write_element(element)

    def write_element(self, element: etree._Element) -> None:
        """Write past the outbound filters (a filter flushing what it held uses this).

        With stream management every stanza is counted and queued until acknowledged (XEP-0198 §4); a
        detached session only queues.
        """
        if self.closed:
            return
        self.server.metrics.stanza_sent(element.tag)
        sm = self.sm
        if sm is not None and is_stanza(element):
            ending = self._ending  # past a bound already: queued (for §4's fate at the close), not written
            sm.sent(element, delay_from=self.server.domain)
            settings = self.server.config.stream_management
            if len(sm.unacked) > settings.max_unacked:
                self._end_soon(
                    StreamError(
                        "policy-violation",
                        f"more than {settings.max_unacked} stanzas unacknowledged (XEP-0198 §4)",
                    )
                )
            elif sm.unacked_bytes > settings.max_unacked_bytes:
                self._end_soon(
                    StreamError(
                        "policy-violation",
                        f"more than {settings.max_unacked_bytes} bytes unacknowledged (XEP-0198 §4)",
                    )
                )
            if not ending:
                self.transport.send(element)
            if self.state is State.ESTABLISHED and sm.request_due(settings.ack_request_every):
                self.transport.send(ack_request())
        else:
            self.transport.send(element)
            self.track_written(element)  # without stream management: kept until proven read
        self.last_write = time.monotonic()

    def _end_soon(self, error: StreamError) -> None:
        """Close from a synchronous path: the close runs as a server task, once."""
        if not self._ending:
            self._ending = True
            self.server.spawn(self.close(error))

    async def close(self, error: StreamError | None = None) -> None:
        """Close the stream: an error if any, then `</stream:stream>` (RFC 6120 §4.4, §4.9.1.2).

        A resumable session whose client stopped answering (connection-timeout) only loses its connection
        (XEP-0198 §5); a detached session just ends (no resumption).
        """
        if self.closed:
            return
        if error is not None:
            self.closed_with = error.described  # not the exception: its traceback
            self.log.info("closing with <%s/>: %s", error.condition, error.text)
        if self.state is State.DETACHED:
            await self._finish()
            return
        if error is not None and error.condition == "connection-timeout" and self.resumable:
            self._drop_transport(error)
            await self._detach()
            return
        if error is not None and error.condition == "system-shutdown" and self.proof is not None:
            self.server.sessions.remove(self)  # what arrives for it meanwhile goes elsewhere (or offline)
            await self.proved(self.server.config.upgrade.proof_timeout)
            if self.closed:  # the client left meanwhile (what it did not prove was re-routed then)
                return
        transport = self.transport
        if self.sm is not None and self.state is State.ESTABLISHED:
            if error is None or error.condition != "system-shutdown":  # shutdown closes one by one
                await self.acks_drained()
            transport.send(ack(self.sm))  # §4 allows unsolicited acks: say what was handled
        transport.close_stream(error)
        await self._finish()
        transport.close()  # after the unbind work: the peer has had time to read the error

    async def connection_lost(self) -> None:
        """The transport is gone (EOF, reset, or after close): a resumable session detaches (XEP-0198 §5),
        any other leaves the session registry.
        """
        if self.resumable:
            await self._detach()
        else:
            await self._finish()

    async def _finish(self) -> None:
        """The session ends: out of the registries; XEP-0198 §4 for what the client never acknowledged,
        then `resource-unbind` (unavailable presence).
        """
        if self.closed:
            return
        was_bound = self.state in (State.ESTABLISHED, State.DETACHED)
        self.state = State.CLOSED
        try:
            if was_bound:
                await self._unbind()
        finally:
            self.server.untrack(self)  # last: shutdown waits for this before closing storage

    async def _unbind(self) -> None:
        self.server.sessions.remove(self)
        if self.sm is not None:
            stanzas = self.sm.take_unacked()
            await self.server.bus.fire("sm-ended", UnackedStanzas(self, stanzas))
        if self.proof is not None and self.closed_with is not None:  # closed by the server: not proven read
            await self.server.bus.fire("c2s-unproven", UnackedStanzas(self, self.proof.take()))
        await self.server.bus.fire("resource-unbind", SessionEvent(self))

    # -- timers (driven by the connection) ----------------------------------------------------------

    async def on_timer(self) -> None:
        """Idle-client ping (XEP-0199 §4.2) and whitespace keepalive (RFC 6120 §4.6.1), as `due`."""
        now = time.monotonic()
        if self.state is not State.ESTABLISHED:
            return
        due = self.due(now)
        if due == "ping-timeout":
            raise StreamError("connection-timeout", "no answer to ping")
        if due == "ping":
            self.send_ping(now)
        elif due == "keepalive":
            sm = self.sm
            if sm is not None and sm.unacked and not sm.ack_requested:
                sm.ack_requested = True
                self.transport.send(ack_request())  # XEP-0198 §4: periodically, while stanzas await an ack
            else:
                self.transport.send_keepalive()
            self.last_write = now
        self.prove_if_due(now)


_Action = Callable[[ClientSession, etree._Element], Awaitable[bool]]

# Every (state, input) a bound session accepts; anything else is a stream error naming both.
_TRANSITIONS: dict[tuple[State, str], _Action] = {
    (State.ESTABLISHED, "stanza"): ClientSession._on_stanza,
    (State.ESTABLISHED, "bind"): ClientSession._on_second_bind,
    (State.ESTABLISHED, "nonza"): ClientSession._on_nonza,
    # Stream Management (XEP-0198): enable after binding (§3), acks (§4); resuming is for unbound streams.
    (State.ESTABLISHED, "sm-enable"): acks.enable,
    (State.ESTABLISHED, "sm-resume"): acks.resume_bound,
    (State.ESTABLISHED, "sm-request"): acks.request,
    (State.ESTABLISHED, "sm-ack"): acks.acknowledge,
}
