"""One XEP-0114 component connection: stream header, handshake, then stanzas in both directions.

Stanzas the component sends are checked (`from` in its domain, else `invalid-from`) and routed in order
by one worker behind a bounded queue, so a flooding component is slowed by TCP backpressure while the
reader still takes the replies the core is waiting for (hook verdicts) without waiting behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

from lxml import etree

from nitro.bridge.handshake import handshake_valid
from nitro.bridge.host import PluginHost
from nitro.core.hosts import check_component_from
from nitro.xmpp import ns
from nitro.xmpp.content_ns import to_internal
from nitro.xmpp.errors import StreamError
from nitro.xmpp.xmlstream import StanzaReceived, StreamClosed, StreamOpened, XMLStreamParser
from nitro.xmpp.xmlwrite import STREAM_FOOTER, serialize, stream_header

log = logging.getLogger(__name__)

HANDSHAKE: Final = f"{{{ns.COMPONENT}}}handshake"
STANZAS: Final = frozenset(f"{{{ns.COMPONENT}}}{kind}" for kind in ("message", "presence", "iq"))
ROUTE_QUEUE: Final = 256  # stanzas read from a link and not yet routed; past it, the link is not read

Route = Callable[[etree._Element], Awaitable[None]]
Lookup = Callable[[str], PluginHost | None]
Extension = Callable[["ComponentLink", etree._Element], Awaitable[bool]]
Health = Callable[["ComponentLink"], Coroutine[Any, Any, None]]


class ComponentLink:
    """Serves one accepted connection until either side closes it (`run` never raises)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        lookup: Lookup,
        route: Route,
        handshake_timeout: float,
        write_timeout: float,
        max_stanza_bytes: int,
        extension: Extension | None = None,
        health: Health | None = None,
        stanzas_per_second: float = 0.0,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._lookup = lookup
        self._route = route
        self._handshake_timeout = handshake_timeout
        self._write_timeout = write_timeout
        self._extension = extension
        self._health = health
        self._rate = stanzas_per_second
        self._parser = XMLStreamParser(
            content_namespaces=frozenset({ns.COMPONENT}), max_stanza_bytes=max_stanza_bytes
        )
        self._events: list[StanzaReceived | StreamClosed | StreamOpened] = []
        self._header_sent = False
        self._closed = False
        self._queue: asyncio.Queue[etree._Element] = asyncio.Queue(ROUTE_QUEUE)
        self.stream_id = secrets.token_hex(16)
        self.host: PluginHost | None = None
        peer = writer.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self.routed = 0  # stanzas from the component handed to the router
        self.last_heard = 0.0  # loop time of the last stanza read from the component (proof of life)

    @property
    def domain(self) -> str | None:
        return None if self.host is None else self.host.domain

    async def run(self) -> None:
        helpers: list[asyncio.Task[None]] = []
        try:
            async with asyncio.timeout(self._handshake_timeout):
                host = await self._authenticate()
            if host.connected:  # Prosody answers a second link for a component with <conflict/>
                raise StreamError("conflict", f"{host.domain} is already connected")
            self.host = host
            host.attach(self)  # held stanzas follow: the <handshake/> below is written before they are
            await self._write(etree.Element(HANDSHAKE, nsmap=ns.default_ns(ns.COMPONENT)))
            log.info("plugin %s connected for %s from %s", host.name, host.domain, self.peer)
            helpers.append(asyncio.create_task(self._route_in_order()))
            if self._health is not None:
                helpers.append(asyncio.create_task(self._health(self)))
            await self._read_stanzas()
        except StreamError as error:
            log.warning("component link from %s (%s): %s", self.peer, self.domain, error.described)
            await self._close(error)
        except TimeoutError:
            await self._close(StreamError("connection-timeout", "no handshake in time"))
        except (ConnectionError, OSError) as exc:
            log.info("component link from %s (%s) lost: %s", self.peer, self.domain, exc)
        finally:
            self.detach()  # first: from now on stanzas for the plugin are held, not written to a dead socket
            for helper in helpers:
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
            await self._close(None)

    def detach(self) -> None:
        if self.host is not None and self.host.link is self:
            self.host.detach(self)
            log.info("plugin %s (%s) disconnected", self.host.name, self.host.domain)

    async def send(self, element: etree._Element) -> None:
        """Write one element (already in jabber:component:accept) to the component."""
        if self._closed:
            raise ConnectionError("the link is closed")
        await self._write(element)

    async def close(self, error: StreamError | None = None) -> None:
        await self._close(error)

    # -- reading ------------------------------------------------------------------------------------

    async def _next(self) -> StanzaReceived | StreamClosed | StreamOpened:
        while not self._events:
            data = await self._reader.read(65536)
            if not data:
                raise ConnectionError("the component closed the connection")
            self._events.extend(self._parser.feed(data))
        return self._events.pop(0)

    async def _authenticate(self) -> PluginHost:
        opened = await self._next()
        if not isinstance(opened, StreamOpened):
            raise StreamError("bad-format", "expected a stream header")
        domain = (opened.to or "").lower()
        await self._write_header(domain or None)
        host = self._lookup(domain)
        if host is None:  # the main domain, or a subdomain no [plugins.NAME] serves
            raise StreamError("host-unknown", f"no plugin is configured for {domain!r}")
        event = await self._next()
        if not isinstance(event, StanzaReceived) or event.element.tag != HANDSHAKE:
            raise StreamError("not-authorized", "a component must first send <handshake/> (XEP-0114 §3)")
        if not handshake_valid(self.stream_id, host.entry.secret, event.element.text):
            raise StreamError("not-authorized", "wrong handshake secret")
        return host

    async def _read_stanzas(self) -> None:
        assert self.host is not None
        while True:
            event = await self._next()
            if isinstance(event, StreamClosed):
                return
            if not isinstance(event, StanzaReceived):
                raise StreamError("bad-format", "a second stream header")
            element = event.element
            self.last_heard = asyncio.get_running_loop().time()
            if element.tag in STANZAS:
                check_component_from(self.host.domain, element)  # XEP-0114 §3.1: invalid-from
                if self._extension is not None and await self._extension(self, element):
                    continue  # the hook protocol's own (nitro/bridge/hooks.py)
                await self._queue.put(to_internal(element, ns.COMPONENT))
            else:
                raise StreamError("unsupported-stanza-type", f"{element.tag} is not a stanza")

    async def _route_in_order(self) -> None:
        """Route what the component sent, in order; at most `stanzas_per_second` (a token bucket holding
        one second's worth), so a flooding plugin fills the queue and then is not read (TCP pushes back)."""
        loop = asyncio.get_running_loop()
        rate = self._rate
        tokens, last = rate, loop.time()
        while True:
            stanza = await self._queue.get()
            if rate > 0:
                now = loop.time()
                tokens, last = min(rate, tokens + (now - last) * rate), now
                if tokens < 1:
                    await asyncio.sleep((1 - tokens) / rate)
                    tokens, last = 1.0, loop.time()
                tokens -= 1
            try:
                await self._route(stanza)  # the router turns failures into error replies itself
            except Exception:
                log.exception("routing a stanza from %s failed", self.domain)
            self.routed += 1

    # -- writing ------------------------------------------------------------------------------------

    async def _write_header(self, domain: str | None) -> None:
        self._header_sent = True
        header = stream_header(
            from_=domain, to=None, id=self.stream_id, content_ns=ns.COMPONENT, version=None
        )
        self._writer.write(header)
        await self._drain()

    async def _write(self, element: etree._Element) -> None:
        if self._writer.is_closing():  # a write now would vanish without an error
            raise ConnectionError("the link is closing")
        self._writer.write(serialize(element))
        await self._drain()

    async def _drain(self) -> None:
        try:
            async with asyncio.timeout(self._write_timeout):
                await self._writer.drain()
        except TimeoutError as exc:
            self._writer.transport.abort()
            raise ConnectionError("the component does not read") from exc

    async def _close(self, error: StreamError | None) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if error is not None:
                if not self._header_sent:
                    await self._write_header(self.domain)
                self._writer.write(serialize(error.to_element()))
            self._writer.write(STREAM_FOOTER)
            async with asyncio.timeout(1.0):
                await self._writer.drain()
        except (ConnectionError, OSError, TimeoutError):
            pass
        finally:
            self._writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._writer.wait_closed()
