"""The hosts-table entry of one configured plugin: registered at start-up, up while its link is; while it
is down, stanzas for it wait in a bounded queue for a while, then the sender gets service-unavailable."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from lxml import etree

from nitro.config_plugins import PluginSection
from nitro.core.hosts import component_down
from nitro.xmpp import ns
from nitro.xmpp.content_ns import to_external
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.jid import JID

log = logging.getLogger(__name__)

Bounce = Callable[[etree._Element, StanzaError], Awaitable[None]]


class Link(Protocol):
    """What a plugin host needs of its connection: write one element in the component namespace."""

    def send(self, element: etree._Element) -> Awaitable[None]: ...


class PluginHost:
    """A `ComponentHost` (nitro/core/hosts.py) for `[plugins.NAME]`: stanzas for its subdomain go to the link
    that authenticated for it. With no link they are held (at most `queue_max`, each `queue_timeout`
    seconds) and written in order once a link attaches; the rest, and the expired, are bounced with
    `service-unavailable` (type wait), never dropped in silence."""

    def __init__(
        self, entry: PluginSection, bounce: Bounce, queue_max: int = 0, queue_timeout: float = 30.0
    ) -> None:
        self.entry = entry
        self.domain = JID.parse(entry.subdomain).domain
        self.link: Link | None = None
        self._bounce = bounce
        self._queue_max = queue_max
        self._queue_timeout = queue_timeout
        # (deadline, stanza in jabber:client): what waits for a link, oldest first
        self._held: collections.deque[tuple[float, etree._Element]] = collections.deque()
        self._flushing: asyncio.Task[None] | None = None
        self._expiring: asyncio.Task[None] | None = None
        self.bounced = 0  # stanzas answered with service-unavailable because the plugin was down
        self.on_attach: list[Callable[[Link], None]] = []  # told when a link attaches (hooks, privileges)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def connected(self) -> bool:
        return self.link is not None

    @property
    def available(self) -> bool:
        """What the router asks before `deliver`: connected, or room to hold one more stanza."""
        return self.link is not None or len(self._held) < self._queue_max

    async def deliver(self, stanza: etree._Element) -> None:
        link = self.link
        if link is not None and not self._held:
            try:
                await link.send(to_external(stanza, ns.COMPONENT))
                return
            except ConnectionError:  # the link went down under this stanza: hold it like the next ones
                pass
        if len(self._held) >= self._queue_max:
            raise component_down(self.domain)
        self._held.append((asyncio.get_running_loop().time() + self._queue_timeout, stanza))
        if self.link is not None:
            self._start_flush()
        elif self._expiring is None or self._expiring.done():
            self._expiring = asyncio.create_task(self._expire())

    def attach(self, link: Link) -> None:
        self.link = link
        if self._held:
            self._start_flush()
        for listener in self.on_attach:
            listener(link)

    def detach(self, link: Link) -> None:
        if self.link is link:
            self.link = None
            if self._held and (self._expiring is None or self._expiring.done()):
                self._expiring = asyncio.create_task(self._expire())

    def _start_flush(self) -> None:
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        """Write what was held, oldest first, while the link is up."""
        while self._held and (link := self.link) is not None:
            _deadline, stanza = self._held[0]
            try:
                await link.send(to_external(stanza, ns.COMPONENT))
            except ConnectionError:
                return  # still held; the next link flushes it
            self._held.popleft()

    async def _expire(self) -> None:
        """Bounce held stanzas whose time is up, while no link takes them."""
        loop = asyncio.get_running_loop()
        while self._held and self.link is None:
            deadline, _stanza = self._held[0]
            if (wait := deadline - loop.time()) > 0:
                await asyncio.sleep(wait)
                continue
            _deadline, stanza = self._held.popleft()
            await self._bounce_one(stanza)

    async def _bounce_one(self, stanza: etree._Element) -> None:
        self.bounced += 1
        try:
            await self._bounce(stanza, component_down(self.domain))
        except Exception:
            log.exception("bouncing a stanza for %s failed", self.domain)

    async def close(self) -> None:
        """At shutdown: stop the timers, and bounce what is still held."""
        for task in (self._flushing, self._expiring):
            if task is not None:
                task.cancel()
        while self._held:
            _deadline, stanza = self._held.popleft()
            await self._bounce_one(stanza)

    def __repr__(self) -> str:
        return f"<PluginHost {self.name} {self.domain} {'up' if self.connected else 'down'}>"
