"""The one place that decides where a stanza goes: event names are the routing table.

Sender side: `pre-<kind>/<to-type>` (hooks such as roster, presence broadcast, carbons).
Recipient side: `<kind>/<to-type>`, and for IQ get/set `iq-<type>/<to-type>/<ns>:<name>` first.
`<to-type>` is `self` (no 'to', or an IQ to the sender's own bare JID), `host`, `bare` or `full`.
Before both, every stanza passes the `stanza-filter` verdict filters; a stanza for another domain goes, after
the sender side, to what the hosts table says serves it (nitro/core/hosts.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from lxml import etree

from nitro.core.delivery import Delivery
from nitro.core.events import STANZA_FILTER, Drop, EventBus, Replace, RoutedStanza
from nitro.core.hosts import LocalHost, RemoteHost, component_down
from nitro.storage.errors import StorageUnavailable
from nitro.xmpp import ns
from nitro.xmpp.errors import StanzaError, error_reply
from nitro.xmpp.jid import JID, InvalidJID

if TYPE_CHECKING:
    from nitro.core.context import Core, Session

log = logging.getLogger(__name__)

ToType = Literal["self", "host", "bare", "full"]
_KINDS = {f"{{{ns.CLIENT}}}{kind}": kind for kind in ("message", "presence", "iq")}  # tag → kind
_TO_TYPES: tuple[ToType, ...] = ("self", "host", "bare", "full")
# The routing event names, built once rather than per stanza.
_PRE_EVENTS = {(kind, to): f"pre-{kind}/{to}" for kind in _KINDS.values() for to in _TO_TYPES}
_EVENTS = {(kind, to): f"{kind}/{to}" for kind in _KINDS.values() for to in _TO_TYPES}
_iq_ids = itertools.count(1)


@dataclass(slots=True)
class StanzaEvent:
    """What a stanza handler receives."""

    stanza: etree._Element
    origin: Session | None  # the client session that sent it; None when the server generated it
    from_: JID
    to: JID | None  # None: addressed to the sender's own account (RFC 6120 §10.3)
    to_type: ToType
    server: Core

    @property
    def kind(self) -> str:
        tag = self.stanza.tag
        return _KINDS.get(tag) or etree.QName(tag).localname

    @property
    def type(self) -> str | None:
        return self.stanza.get("type")

    async def reply(self, stanza: etree._Element) -> None:
        """Answer the sender: straight to its session, or through the router if the server sent it."""
        if self.origin is not None:
            self.origin.send(stanza)
        else:
            await self.server.router.route(stanza)


def classify(to: JID | None, from_: JID, domain: str, kind: str) -> ToType:
    if to is None:
        return "self"
    if to.local is None:
        return "host"
    if to.resource is None:
        return "self" if kind == "iq" and to == from_.bare else "bare"
    return "full"


class Router:
    """Fires the routing events for each stanza and turns StanzaErrors into error replies."""

    def __init__(self, server: Core, bus: EventBus, delivery: Delivery) -> None:
        self.server = server
        self.bus = bus
        self.delivery = delivery
        self.domain = server.config.server.domain
        self._pending_iq: dict[str, asyncio.Future[etree._Element]] = {}
        self.hosts = server.hosts

    async def route(self, stanza: etree._Element, origin: Session | None = None) -> None:
        """Route one stanza whose 'from' is already trusted (stamped by the session or the server)."""
        start = time.perf_counter()
        try:
            await self._route(stanza, origin)
        except StanzaError as error:
            await self._reply_error(stanza, error, origin)
        except StorageUnavailable as exc:  # nothing was written: RFC 6120 §8.3.3.6, type wait (try again)
            log.warning("storage unavailable for %s from %s: %s", stanza.tag, stanza.get("from"), exc)
            unavailable = StanzaError(
                "internal-server-error", "storage is unavailable, try again", type="wait"
            )
            await self._reply_error(stanza, unavailable, origin)
        except Exception:
            log.exception("stanza handler failed for %s from %s", stanza.tag, stanza.get("from"))
            await self._reply_error(stanza, StanzaError("internal-server-error"), origin)
        finally:
            self.server.metrics.routing.observe(time.perf_counter() - start)

    async def _route(self, stanza: etree._Element, origin: Session | None) -> None:
        kind, from_, to = self._addresses(stanza)
        if self.bus.has_filters(STANZA_FILTER):
            payload = RoutedStanza(stanza, from_, to, None if origin is None else origin.jid)
            verdict = await self.bus.filter(STANZA_FILTER, payload)
            if isinstance(verdict, Drop):
                if verdict.error is not None:
                    raise verdict.error
                return
            if isinstance(verdict, Replace):
                stanza = verdict.stanza
                kind, from_, to = self._addresses(stanza)
        host = self.hosts.local if to is None or to.domain == self.domain else self.hosts.get(to.domain)
        if host is None or isinstance(host, RemoteHost):  # RFC 6120 §10.4.3 (no s2s yet)
            assert to is not None
            raise StanzaError("remote-server-not-found", f"no route to {to.domain}")
        to_type = classify(to, from_, self.domain, kind)
        event = StanzaEvent(stanza, origin, from_, to, to_type, self.server)
        if origin is not None and await self.bus.fire(_PRE_EVENTS[kind, to_type], event):
            return
        if not isinstance(host, LocalHost):  # a component: its link takes the stanza (XEP-0114)
            if not host.available:
                raise component_down(host.domain)
            await host.deliver(stanza)
            return
        if kind == "iq":
            await self._route_iq(event)
            return
        await self.bus.fire(_EVENTS[kind, to_type], event)

    def _addresses(self, stanza: etree._Element) -> tuple[str, JID, JID | None]:
        """The stanza's kind, sender and recipient; a stanza with no 'to' gets one (RFC 6120 §10.3)."""
        kind = _KINDS.get(stanza.tag)
        if kind is None:
            raise StanzaError("bad-request", "not a stanza")
        from_ = JID.parse(stanza.get("from") or self.domain)
        to_text = stanza.get("to")
        try:
            to = JID.parse(to_text) if to_text is not None else None
        except InvalidJID as exc:
            raise StanzaError("jid-malformed", str(exc)) from exc
        if to is None and kind == "message":
            to = from_.bare  # RFC 6120 §10.3.1: a message with no 'to' is for the sender's bare JID
            stanza.set("to", str(to))
        elif to is None and from_.domain != self.domain:
            # §10.3: no 'to' means the sender's own server; a component's is its own domain, never the
            # IM host (whose `self` handlers would take the sender's localpart for a local account).
            to = JID(None, from_.domain, None)
            stanza.set("to", from_.domain)
        return kind, from_, to

    async def _route_iq(self, event: StanzaEvent) -> None:
        iq_type = event.type
        if iq_type in ("get", "set"):
            children = [child for child in event.stanza if isinstance(child.tag, str)]
            if len(children) != 1:
                raise StanzaError("bad-request", "an IQ get/set has exactly one payload (RFC 6120 §8.2.3)")
            payload = etree.QName(children[0])
            names = [f"iq-{iq_type}/{event.to_type}/{payload.namespace}:{payload.localname}"]
            if event.to_type == "self":
                names.append(f"iq-{iq_type}/bare/{payload.namespace}:{payload.localname}")
            for name in names:
                if await self.bus.fire(name, event):
                    return
            if await self.bus.fire(f"iq/{event.to_type}", event) or self._deliver_full(event):
                return
            raise StanzaError("service-unavailable")  # RFC 6121 §8.5.1, §8.5.3.1, RFC 6120 §8.4
        if iq_type in ("result", "error"):
            if event.to_type in ("host", "self") and self._resolve_pending(event.stanza):
                return
            if not await self.bus.fire(f"iq/{event.to_type}", event):
                self._deliver_full(event)  # a reply whose requester is gone is dropped (§8.5.3.1)
            return
        raise StanzaError("bad-request", "IQ type must be get, set, result or error")

    def _deliver_full(self, event: StanzaEvent) -> bool:
        return event.to_type == "full" and event.to is not None and self.deliver(event.to, event.stanza)

    async def _reply_error(self, stanza: etree._Element, error: StanzaError, origin: Session | None) -> None:
        if stanza.get("type") == "error":
            return  # RFC 6120 §8.3.1: never answer an error with an error
        reply = error_reply(stanza, error)
        if origin is not None:
            origin.send(reply)
        elif reply.get("to"):
            await self.route(reply)

    def deliver(self, full: JID, stanza: etree._Element) -> bool:
        """Hand a stanza to the resource bound to `full` (nitro/core/delivery.py); False if none is."""
        return self.delivery.deliver(full, stanza)

    async def send_iq(self, iq: etree._Element, timeout: float) -> etree._Element:
        """Send a server-originated IQ get/set and wait for its result (raises TimeoutError)."""
        iq_id = iq.get("id") or f"nitro-{next(_iq_ids)}"
        iq.set("id", iq_id)
        future: asyncio.Future[etree._Element] = asyncio.get_running_loop().create_future()
        self._pending_iq[iq_id] = future
        try:
            await self.route(iq)
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending_iq.pop(iq_id, None)

    def _resolve_pending(self, stanza: etree._Element) -> bool:
        future = self._pending_iq.get(stanza.get("id") or "")
        if future is None or future.done():
            return False
        future.set_result(stanza)
        return True
