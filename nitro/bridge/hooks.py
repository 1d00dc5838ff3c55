"""Hooks for plugins (plugins/PROTOCOL.md): a plugin registers filter/observe hooks with an IQ in
urn:nitro:plugin:hooks:0; the core asks its filters for a verdict (the event bus applies the per-plugin
timeout, fail-open/closed policy and `priority` order) and sends its observers copies through a bounded
queue (a full queue drops and counts). Registrations belong to the plugin, not to one link: while it is
down its filters fail by policy and its observe events wait in the queue."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from lxml import etree

from nitro.bridge.host import PluginHost
from nitro.bridge.jetstream import JetStreamSpool
from nitro.bridge.link import ComponentLink
from nitro.bridge.spool import ObserveQueue, Spool
from nitro.bridge.verdicts import (
    HOOKS,
    KINDS,
    SESSION_EVENTS,
    STANZA_EVENTS,
    filter_request,
    observe_event,
    parse_verdict,
)
from nitro.core.context import Core
from nitro.core.events import (
    PASS,
    STANZA_FILTER,
    Drop,
    FailurePolicy,
    RoutedStanza,
    Verdict,
    failed_filter_error,
)
from nitro.xmpp import ns
from nitro.xmpp.content_ns import to_external
from nitro.xmpp.errors import StanzaError, error_reply
from nitro.xmpp.stanza import iq_result

log = logging.getLogger(__name__)

OBSERVER_PRIORITY: Final = -(10**9)  # observers see a stanza after every filter (what is really routed)
_IQ: Final = f"{{{ns.COMPONENT}}}iq"
_MESSAGE: Final = f"{{{ns.COMPONENT}}}message"
_SESSION_BUS_EVENTS: Final = {
    "login": "resource-bind",
    "logout": "resource-unbind",
    "roster": "roster-changed",
}


class PluginHooks:
    """One plugin's hooks: what it registered, its filter requests in flight, its observe queue."""

    def __init__(self, core: Core, host: PluginHost) -> None:
        self.core = core
        self.host = host
        entry = host.entry
        self.policy = FailurePolicy(entry.failure_policy)
        self.filters: frozenset[str] = frozenset()
        self.observes: frozenset[str] = frozenset()
        self.pending: dict[str, asyncio.Future[etree._Element]] = {}
        spool = Spool(core.config.path(entry.spool)) if entry.spool else None
        self.queue = ObserveQueue(entry.observe_queue, spool)
        self.jetstream: JetStreamSpool | None = None  # opened by `open` when [plugins.NAME] jetstream is set
        self.filtered = 0  # filter requests answered
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._undo: list[Callable[[], None]] = [
            core.bus.add_filter(
                STANZA_FILTER,
                self.filter,
                priority=entry.priority,
                timeout=entry.filter_timeout,
                policy=self.policy,
            ),
            core.bus.add_filter(STANZA_FILTER, self.observe_stanza, priority=OBSERVER_PRIORITY),
        ]
        host.on_attach.append(lambda _link: self.reconnected())  # what waited while it was down goes out
        for event, bus_event in _SESSION_BUS_EVENTS.items():
            self._undo.append(
                core.bus.add(bus_event, self._session_observer(event), priority=OBSERVER_PRIORITY)
            )

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def register(self, filters: frozenset[str], observes: frozenset[str], acking: bool = False) -> None:
        """A registration replaces the plugin's previous one."""
        self.filters, self.observes = filters, observes
        self.queue.acking = acking
        log.info("plugin %s hooks: filter %s, observe %s", self.host.name, sorted(filters), sorted(observes))
        self.wake()

    def _involved(self, payload: RoutedStanza) -> bool:
        """Its own traffic is not sent to a plugin (no loops, no cost)."""
        domain = self.host.domain
        return payload.from_.domain == domain or (payload.to is not None and payload.to.domain == domain)

    async def filter(self, payload: RoutedStanza) -> Verdict:
        kind = etree.QName(payload.stanza).localname
        if kind not in self.filters or self._involved(payload):
            return PASS
        link = self.host.link
        if not isinstance(link, ComponentLink):
            log.debug("plugin %s is down: its %s filter fails %s", self.host.name, kind, self.policy.value)
            return PASS if self.policy is FailurePolicy.OPEN else Drop(failed_filter_error())
        request = filter_request(self.core.domain, self.host.domain, kind, payload.stanza)
        request_id = request.get("id", "")
        future: asyncio.Future[etree._Element] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        try:
            await link.send(request)
            answer = await future  # the bus's timeout cancels this wait
        finally:
            self.pending.pop(request_id, None)
        self.filtered += 1
        return parse_verdict(answer, payload.stanza)  # ValueError: the bus applies the failure policy

    async def observe_stanza(self, payload: RoutedStanza) -> Verdict:
        kind = etree.QName(payload.stanza).localname
        if kind in self.observes and not self._involved(payload):
            self.enqueue(observe_event(self.core.domain, self.host.domain, kind, payload.stanza))
        return PASS

    def _session_observer(self, event: str) -> Callable[[Any], Any]:
        async def observe(payload: Any) -> None:
            if event not in self.observes:
                return
            if event == "roster":
                attributes = {
                    "user": payload.username,
                    "jid": payload.jid,
                    "subscription": payload.subscription,
                }
            else:
                attributes = {"jid": str(payload.session.jid)}
            self.enqueue(observe_event(self.core.domain, self.host.domain, event, **attributes))

        return observe

    def enqueue(self, event: etree._Element) -> None:
        if self.queue.put(event):
            self.wake()

    def reconnected(self) -> None:
        self.queue.resend()
        self.wake()

    def wake(self) -> None:
        self._wake.set()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send())

    async def _send(self) -> None:
        """Write queued observe events in order while the plugin's link is up; wait for it otherwise."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending = self.queue.pending
            while pending and isinstance(link := self.host.link, ComponentLink):
                seq, message = pending[0]
                try:
                    await link.send(message)
                except ConnectionError:
                    break
                pending.popleft()
                self.queue.sent(seq, message)

    def answer(self, iq: etree._Element) -> bool:
        """An IQ result/error for one of our filter requests: hand it to the waiting filter."""
        future = self.pending.get(iq.get("id") or "")
        if future is None or future.done():
            return False
        future.set_result(iq)
        return True

    async def open(self) -> None:
        if self.host.entry.jetstream:
            self.jetstream = await JetStreamSpool.open(self.host.entry.jetstream, self.host.name)
            self.queue.attach(self.jetstream)

    def close(self) -> None:
        for undo in self._undo:
            undo()
        if self._sender is not None:
            self._sender.cancel()
        if self.queue.spool is not None:
            self.queue.spool.close()


class Hooks:
    """The link extension for urn:nitro:plugin:hooks:0 and every plugin's hooks."""

    def __init__(self, core: Core, hosts: dict[str, PluginHost]) -> None:
        self.core = core
        self.plugins = {host.domain: PluginHooks(core, host) for host in hosts.values()}

    async def handle(self, link: ComponentLink, element: etree._Element) -> bool:
        """Take what is for the hook protocol off the link (True); leave the rest to the router."""
        hooks = self.plugins.get(link.domain or "")
        if hooks is None or element.tag not in (_IQ, _MESSAGE):
            return False
        if element.tag == _MESSAGE and (ack := element.find(f"{{{HOOKS}}}ack")) is not None:
            if ack.get("spool") == hooks.queue.epoch and (ack.get("seq") or "").isdigit():
                hooks.queue.ack(int(ack.get("seq") or 0))
            return True
        iq_type = element.get("type")
        if iq_type in ("result", "error"):
            return hooks.answer(element)
        register = element.find(f"{{{HOOKS}}}register")
        if iq_type != "set" or register is None:
            return False
        reply = self._register(hooks, element, register)
        await link.send(reply)
        return True

    def _register(self, hooks: PluginHooks, iq: etree._Element, register: etree._Element) -> etree._Element:
        wanted: dict[str, set[str]] = {kind: set() for kind in KINDS}
        for hook in register:
            event, kind = hook.get("event") or "", hook.get("kind") or ""
            allowed = STANZA_EVENTS if kind == "filter" else (*STANZA_EVENTS, *SESSION_EVENTS)
            if etree.QName(hook).localname != "hook" or kind not in KINDS or event not in allowed:
                error = StanzaError("bad-request", f"no {kind!r} hook for event {event!r}")
                return error_reply(iq, error)  # in the component namespace, like the request
        for hook in register:
            wanted[hook.get("kind") or ""].add(hook.get("event") or "")
        acking = register.get("ack") in ("true", "1")  # observe events are kept until acknowledged
        hooks.register(frozenset(wanted["filter"]), frozenset(wanted["observe"]), acking)
        return to_external(iq_result(iq), ns.COMPONENT)

    async def open(self) -> None:
        """Connect the JetStream spools (before the listener takes links)."""
        for hooks in self.plugins.values():
            await hooks.open()

    async def aclose(self) -> None:
        for hooks in self.plugins.values():
            hooks.close()
            if hooks.jetstream is not None:
                await hooks.jetstream.aclose()
