"""The plugin listener (`[plugins] host`/`port`, XEP-0114): plugin hosts in the hosts table, one link per
accepted connection, peers outside loopback and `allowed_peers` refused."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from lxml import etree

from nitro.bridge.handshake import peer_allowed
from nitro.bridge.hooks import Hooks
from nitro.bridge.host import PluginHost
from nitro.bridge.link import ComponentLink, Extension
from nitro.bridge.metrics import PluginCollector
from nitro.bridge.privilege import Powers
from nitro.bridge.supervisor import Supervisor
from nitro.core.context import Core
from nitro.transports.listeners import Listeners
from nitro.xmpp import ns
from nitro.xmpp.errors import StanzaError, StreamError, error_reply

log = logging.getLogger(__name__)


class Bridge:
    """The plugins of this server: their hosts (one per `[plugins.NAME]`) and the links that serve them."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.config = core.config.plugins
        self.plugins: dict[str, PluginHost] = {}  # by name
        self._by_domain: dict[str, PluginHost] = {}
        self.links: set[ComponentLink] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._undo = [
            self._add(PluginHost(entry, self._bounce, self.config.queue_max, self.config.queue_timeout))
            for entry in self.config.entries
        ]
        self.listener: asyncio.Server | None = None  # the first of _servers (its port is `port`)
        self._servers: list[asyncio.Server] = []
        self.hooks = Hooks(core, self.plugins)  # urn:nitro:plugin:hooks:0 on every link
        self.powers = Powers(core, self.plugins)  # XEP-0356 privileges, XEP-0355 delegations
        self.extension: Extension | None = self._extension
        self._collector = PluginCollector(self.plugins, self.hooks)
        if self.plugins:
            core.metrics.registry.register(self._collector)
        self.supervisor: Supervisor | None = None

    async def _extension(self, link: ComponentLink, element: etree._Element) -> bool:
        return await self.hooks.handle(link, element) or await self.powers.handle(link, element)

    def _add(self, host: PluginHost) -> Callable[[], None]:
        self.plugins[host.name] = host
        self._by_domain[host.domain] = host
        return self.core.hosts.add(host.domain, host)

    def lookup(self, domain: str) -> PluginHost | None:
        return self._by_domain.get(domain)

    @property
    def port(self) -> int:
        """The port the listener is bound to (the configured one, or the one the system picked for 0)."""
        assert self.listener is not None
        return int(self.listener.sockets[0].getsockname()[1])

    async def start(self, listening: Listeners) -> None:
        """Accept plugin links on the registry's `plugins` sockets (bound, or inherited by upgrades)."""
        await self.hooks.open()
        sockets = listening.tcp("plugins", self.config.host, self.config.port, 128)

        async def accept(given: list[socket.socket]) -> Callable[[], None]:
            servers = [await asyncio.start_server(self._accept, sock=sock) for sock in given]
            self.listener = servers[0]
            self._servers = servers
            addresses = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in given)
            log.info(
                "plugins (XEP-0114) listening on %s for %s", addresses, ", ".join(self._by_domain) or "none"
            )

            def stop() -> None:
                for server in servers:
                    server.close()

            return stop

        await listening.serve("plugins", sockets, accept)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        c2s = self.core.config.c2s
        link = ComponentLink(
            reader,
            writer,
            lookup=self.lookup,
            route=self.core.router.route,
            handshake_timeout=self.config.handshake_timeout,
            write_timeout=c2s.write_timeout,
            max_stanza_bytes=c2s.max_stanza_bytes,
            extension=self.extension,
            health=self._ping,
            stanzas_per_second=self.config.stanzas_per_second,
        )
        if not peer_allowed(link.peer, self.config.allowed_peers):
            log.warning("plugin connection from %s refused: not loopback nor in allowed_peers", link.peer)
            await link.close(StreamError("policy-violation", f"{link.peer} may not connect as a plugin"))
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.links.add(link)
        try:
            await link.run()
        finally:
            self.links.discard(link)
            self._tasks.discard(task)

    async def _bounce(self, stanza: etree._Element, error: StanzaError) -> None:
        """The sender of a stanza its plugin could not take gets `error` (never an error for an error)."""
        if stanza.get("type") != "error" and stanza.get("from"):
            await self.core.router.route(error_reply(stanza, error))

    async def _ping(self, link: ComponentLink) -> None:
        """XEP-0199 §4.3 server-to-component pings; any answer (even an error) proves the link alive, and
        so does any stanza read from it: a link heard from within the interval is not pinged, and a ping
        whose answer is stuck behind a backlog (the link's route queue) does not close a link that spoke
        since the ping was sent."""
        loop = asyncio.get_running_loop()
        interval = self.config.ping_interval
        while True:
            await asyncio.sleep(interval)
            if link.domain is None or loop.time() - link.last_heard < interval:
                continue  # not yet authenticated, or busy: alive
            iq = etree.Element(
                f"{{{ns.CLIENT}}}iq", type="get", to=link.domain, nsmap=ns.default_ns(ns.CLIENT)
            )
            iq.set("from", self.core.domain)
            etree.SubElement(iq, f"{{{ns.PING}}}ping", nsmap=ns.default_ns(ns.PING))
            sent = loop.time()
            try:
                await self.core.router.send_iq(iq, self.config.ping_timeout)
            except TimeoutError:
                if link.last_heard >= sent:
                    continue  # it spoke meanwhile: the answer waits in the queue behind what it sent
                log.warning(
                    "plugin %s did not answer a ping in %ss: link closed",
                    link.domain,
                    self.config.ping_timeout,
                )
                await link.close(StreamError("connection-timeout", "no answer to a ping (XEP-0199)"))
                return

    async def settle(self, timeout: float) -> None:
        """Ping every connected plugin and wait (at most `timeout` seconds) for the answers: a plugin handles
        its link in order, so once it answered, what it was sent before (an upgrade's last stanzas for it)
        was handled and its replies were routed — before the upgrade's socket to the successor closes."""
        domains = [link.domain for link in self.links if link.domain is not None]
        pings = []
        for domain in domains:
            iq = etree.Element(f"{{{ns.CLIENT}}}iq", type="get", to=domain, nsmap=ns.default_ns(ns.CLIENT))
            iq.set("from", self.core.domain)
            etree.SubElement(iq, f"{{{ns.PING}}}ping", nsmap=ns.default_ns(ns.PING))
            pings.append(self.core.router.send_iq(iq, timeout))
        for domain, outcome in zip(
            domains, await asyncio.gather(*pings, return_exceptions=True), strict=True
        ):
            if isinstance(outcome, BaseException):
                log.warning("plugin %s did not settle before the hand-over ended: %s", domain, outcome)

    async def stop(self) -> None:
        """Stop accepting, close every link with `<system-shutdown/>`, unregister the plugin hosts."""
        for server in self._servers:
            server.close()
        for link in list(self.links):
            await link.close(StreamError("system-shutdown"))
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=2.0)
            for task in pending:
                task.cancel()
        await self.hooks.aclose()
        self.powers.close()
        if self.plugins:
            self.core.metrics.registry.unregister(self._collector)
        for host in self.plugins.values():
            await host.close()
        for undo in self._undo:
            undo()


@asynccontextmanager
async def serve_plugins(core: Core, listening: Listeners) -> AsyncIterator[Bridge]:
    """The plugin hosts and the listener for this scope; the listener's sockets are in the registry of
    listening sockets (`listening`), which an upgrade hands to the successor."""
    bridge = Bridge(core)
    supervisor = Supervisor(core.config, lambda: bridge.port)
    bridge.supervisor = supervisor
    try:
        if bridge.plugins:  # no [plugins.NAME], no listener
            await bridge.start(listening)
            supervisor.start()
        yield bridge
    finally:
        with contextlib.suppress(Exception):
            await supervisor.stop()
        with contextlib.suppress(Exception):
            await bridge.stop()
