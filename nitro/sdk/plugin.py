"""The plugin class authors use: decorators for message, presence and IQ handlers on a slixmpp
`ComponentXMPP`, and `main(settings)`, which connects, reconnects with backoff, and runs until cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from xml.etree import ElementTree as ET

from slixmpp import JID, Iq, Message, Presence
from slixmpp.componentxmpp import ComponentXMPP
from slixmpp.xmlstream.handler import CoroutineCallback
from slixmpp.xmlstream.matcher.base import MatcherBase
from slixmpp.xmlstream.stanzabase import StanzaBase

from nitro.sdk.hooks import (
    HOOKS,
    FilterHandler,
    ObserveHandler,
    Pass,
    Verdict,
    ack_element,
    observed,
    register_element,
    run_filters,
    verdict_element,
)
from nitro.sdk.settings import PluginSettings

log = logging.getLogger(__name__)

MessageHandler = Callable[[Message], Awaitable[None]]
PresenceHandler = Callable[[Presence], Awaitable[None]]
IqHandler = Callable[[Iq], Awaitable[ET.Element | None]]
StartHandler = Callable[[ComponentXMPP], Awaitable[None]]


STABLE_AFTER = 10.0  # seconds connected after which the next reconnect starts again from the shortest delay


class _IqMatcher(MatcherBase):
    """IQs of one type whose payload is `{namespace}name`."""

    def __init__(self, iq_type: str, namespace: str, name: str) -> None:
        super().__init__((iq_type, f"{{{namespace}}}{name}"))
        self._type = iq_type
        self._payload = f"{{{namespace}}}{name}"

    def match(self, xml: StanzaBase) -> bool:
        return (
            xml.xml.tag.endswith("}iq")
            and xml.xml.get("type") == self._type
            and xml.xml.find(self._payload) is not None
        )


class Plugin:
    """A Nitro plugin: declare handlers with the decorators, then run `main(settings)` (or `cli()`).

    Handlers are coroutines. An IQ handler returns the payload of the result (or None for an empty
    result); raising `slixmpp.exceptions.XMPPError` answers with that error instead.
    """

    def __init__(self, name: str, *, min_backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        self.name = name
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._messages: list[MessageHandler] = []
        self._presences: list[PresenceHandler] = []
        self._iqs: list[tuple[str, str, str, IqHandler]] = []
        self._starts: list[StartHandler] = []
        self._filters: dict[str, list[FilterHandler]] = {}
        self._observers: dict[str, list[ObserveHandler]] = {}
        self.xmpp: ComponentXMPP | None = None  # the current connection, None while down
        self.connections = 0  # sessions started so far (a reconnect adds one)

    # -- declaring ----------------------------------------------------------------------------------

    def message(self, handler: MessageHandler) -> MessageHandler:
        """Every message sent to the plugin's domain (or a JID in it)."""
        self._messages.append(handler)
        return handler

    def presence(self, handler: PresenceHandler) -> PresenceHandler:
        self._presences.append(handler)
        return handler

    def iq(self, namespace: str, name: str = "query", type: str = "get") -> Callable[[IqHandler], IqHandler]:
        """IQs of `type` ("get" or "set") whose payload is `<name xmlns=namespace>`."""

        def register(handler: IqHandler) -> IqHandler:
            self._iqs.append((type, namespace, name, handler))
            return handler

        return register

    def filter(self, event: str) -> Callable[[FilterHandler], FilterHandler]:
        """A filter hook on routed stanzas of `event` ("message", "presence", "iq"): the core waits for its
        verdict (Pass(), Drop(condition, text), Replace(stanza)) up to the plugin's filter_timeout."""

        def register(handler: FilterHandler) -> FilterHandler:
            self._filters.setdefault(event, []).append(handler)
            return handler

        return register

    def has_filter(self, event: str, handler: FilterHandler) -> bool:
        """Whether `handler` already filters `event` (for a filter registered at start, not import)."""
        return handler in self._filters.get(event, [])

    def observe(self, event: str) -> Callable[[ObserveHandler], ObserveHandler]:
        """An observe hook: copies of routed stanzas ("message", "presence", "iq") or session events
        ("login", "logout", "roster"), sent without holding anything up."""

        def register(handler: ObserveHandler) -> ObserveHandler:
            self._observers.setdefault(event, []).append(handler)
            return handler

        return register

    def on_start(self, handler: StartHandler) -> StartHandler:
        """Called with the connection each time a session starts (after a reconnect too)."""
        self._starts.append(handler)
        return handler

    # -- running ------------------------------------------------------------------------------------

    def component(self, settings: PluginSettings) -> ComponentXMPP:
        """A fresh slixmpp component with this plugin's handlers registered."""
        xmpp = ComponentXMPP(settings.subdomain, settings.secret, settings.core_host, settings.core_port)
        xmpp.register_plugin("xep_0030")
        xmpp.register_plugin("xep_0199")
        for handler in self._messages:
            xmpp.add_event_handler("message", _not_hook_events(handler))
        for presence in self._presences:
            xmpp.add_event_handler("presence", presence)
        for iq_type, namespace, name, iq_handler in self._iqs:
            xmpp.register_handler(
                CoroutineCallback(
                    f"{self.name}:{iq_type}:{namespace}:{name}",
                    _IqMatcher(iq_type, namespace, name),
                    _answering(iq_handler),
                )
            )
        if self._filters or self._observers:
            self._add_hooks(xmpp, settings)
        for start in self._starts:
            xmpp.add_event_handler("session_start", lambda _event, start=start: start(xmpp))
        return xmpp

    def _add_hooks(self, xmpp: ComponentXMPP, settings: PluginSettings) -> None:
        """Register the hooks with the core at each session start; answer filters; dispatch events."""
        hooks = [(event, "filter") for event in self._filters] + [
            (event, "observe") for event in self._observers
        ]

        async def register(_event: Any) -> None:
            iq = xmpp.make_iq_set(ito=settings.server_domain, ifrom=settings.subdomain)
            iq.append(register_element(hooks))
            await iq.send(timeout=10)
            log.info("plugin %s: hooks registered: %s", self.name, hooks)

        async def on_filter(stanza: StanzaBase) -> None:
            request = stanza.xml.find(f"{{{HOOKS}}}filter")
            assert isinstance(stanza, Iq)
            assert request is not None
            subject = next(iter(request), None)
            handlers = self._filters.get(request.get("event", ""), [])
            if subject is None or not handlers:
                verdict: Verdict = Pass()
            else:
                verdict = await run_filters(handlers, subject)
            reply = stanza.reply(clear=True)
            reply.append(verdict_element(verdict))
            reply.send()

        async def on_event(stanza: StanzaBase) -> None:
            element = stanza.xml.find(f"{{{HOOKS}}}event")
            assert element is not None
            event = observed(element)
            for handler in self._observers.get(event.name, []):
                try:
                    await handler(event)
                except Exception:
                    # not acknowledged: the core sends it again after the next reconnect
                    log.exception("plugin %s: observer of %s failed", self.name, event.name)
                    return
            if event.seq:
                ack = xmpp.make_message(mto=JID(settings.server_domain), mfrom=JID(settings.subdomain))
                ack.append(ack_element(event))
                ack.send()

        xmpp.add_event_handler("session_start", register)
        xmpp.register_handler(
            CoroutineCallback(f"{self.name}:filter", _HookMatcher("iq", "filter"), on_filter)
        )
        xmpp.register_handler(
            CoroutineCallback(f"{self.name}:event", _HookMatcher("message", "event"), on_event)
        )

    async def main(self, settings: PluginSettings) -> None:
        """Connect to the core and stay connected (reconnecting with exponential backoff) until cancelled."""
        delay = self.min_backoff
        while True:
            started = await self._connect_once(settings)
            if started is not None and time.monotonic() - started >= STABLE_AFTER:
                delay = self.min_backoff
            log.info("plugin %s: reconnecting in %.1fs", self.name, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)

    async def _connect_once(self, settings: PluginSettings) -> float | None:
        """One connection until it ends; returns when its session started (None if it never did)."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        started: list[float] = []
        xmpp = self.component(settings)

        def on_start(_event: Any) -> None:
            started.append(time.monotonic())
            self.xmpp = xmpp
            self.connections += 1
            log.info("plugin %s: connected to %s:%s", self.name, settings.core_host, settings.core_port)

        def on_end(_event: Any) -> None:
            if not ended.done():
                ended.set_result(None)

        xmpp.add_event_handler("session_start", on_start)
        xmpp.add_event_handler("disconnected", on_end)
        xmpp.add_event_handler("connection_failed", on_end)
        xmpp.add_event_handler("stream_error", lambda error: log.warning("plugin %s: %s", self.name, error))
        try:
            xmpp.connect()
            await ended
        finally:
            if self.xmpp is xmpp:
                self.xmpp = None
            _close(xmpp)
        return started[0] if started else None

    def cli(self, argv: list[str] | None = None) -> None:
        """`python -m plugins.NAME --config FILE [--name NAME] [--core HOST:PORT]`."""
        from nitro.sdk.cli import run

        run(self.main, self.name, argv)


class _HookMatcher(MatcherBase):
    """Stanzas of the hook protocol: an IQ set carrying <filter/>, a message carrying <event/>."""

    def __init__(self, kind: str, child: str) -> None:
        super().__init__((kind, child))
        self._kind = kind
        self._child = f"{{{HOOKS}}}{child}"

    def match(self, xml: StanzaBase) -> bool:
        return xml.xml.tag.endswith(f"}}{self._kind}") and xml.xml.find(self._child) is not None


def _not_hook_events(handler: MessageHandler) -> MessageHandler:
    """Message handlers do not see the hook protocol's observe events."""

    async def handle(message: Message) -> None:
        if message.xml.find(f"{{{HOOKS}}}event") is None:
            await handler(message)

    return handle


def _answering(handler: IqHandler) -> Callable[[StanzaBase], Awaitable[None]]:
    async def answer(iq: StanzaBase) -> None:
        assert isinstance(iq, Iq)
        payload = await handler(iq)
        reply = iq.reply(clear=True)
        if payload is not None:
            reply.append(payload)
        reply.send()

    return answer


def _close(xmpp: ComponentXMPP) -> None:
    """Stop everything slixmpp started for this connection (its connect loop and its send filter task)."""
    xmpp.cancel_connection_attempt()
    xmpp.abort()
    filters = getattr(xmpp, "_run_out_filters", None)
    if isinstance(filters, asyncio.Future):
        filters.cancel()
    with contextlib.suppress(Exception):
        if xmpp.transport is not None:
            xmpp.transport.abort()
