"""The server process: storage, modules and listeners in one scope; shutdown drains connections."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from nitro.bridge.listener import Bridge, serve_plugins
from nitro.cluster.node import Cluster, cluster_member
from nitro.cluster.workers import shares_ports
from nitro.config import Config
from nitro.core.delivery import Delivery
from nitro.core.directory import SessionDirectory
from nitro.core.disco import DiscoRegistry
from nitro.core.events import EventBus
from nitro.core.hosts import HostTable
from nitro.core.logins import AccountLogins
from nitro.core.module import BUILTIN_MODULES, Module, load_module
from nitro.core.router import Router
from nitro.core.sessions import Sessions
from nitro.core.slots import SlotRegistry
from nitro.core.throttle import FailureThrottle
from nitro.observe.gc_pacer import paced_gc, without_full_collections
from nitro.observe.metrics import Metrics
from nitro.observe.metrics_http import MetricsEndpoint, serve_metrics
from nitro.observe.runtime import tuned_gc
from nitro.ops.admin import AdminChannel, serve_admin
from nitro.ops.reload import ReloadReport, reload_config
from nitro.storage import Storage
from nitro.storage.layered import open_storage
from nitro.storage.tiers import Tiers
from nitro.storage.timed import timed_storage
from nitro.transports.http import serve_http
from nitro.transports.limits import SharedLimits
from nitro.transports.listeners import Listeners
from nitro.transports.tcp import connection_factory
from nitro.transports.tls import make_tls_context
from nitro.xmpp.errors import StreamError

if TYPE_CHECKING:
    from nitro.c2s.negotiation import Negotiation
    from nitro.c2s.session import ClientSession
    from nitro.core.context import Session

    Tracked = Negotiation | ClientSession  # a connection's stream: negotiating, bound or detached

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 5.0


class Server:
    """Everything one node holds; modules reach the rest of the core through it."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        tls_context: ssl.SSLContext | None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.storage = storage
        self.tls_context = tls_context
        self.hosts = HostTable(config.server.domain)  # domain → local IM host or component (core/hosts.py)
        self.bus = EventBus()
        self.disco = DiscoRegistry()
        self.slots = SlotRegistry()  # the per-session state modules declare (nitro/core/slots.py)
        self.sessions: Sessions[Session] = Sessions()
        self.delivery = Delivery(self.sessions)
        self.deliver = self.delivery.deliver  # the one way modules reach another entity's session
        self.router = Router(self, self.bus, self.delivery)
        self.negotiations = asyncio.Semaphore(config.c2s.max_negotiating)
        self.account_logins = AccountLogins(lambda: self.config.c2s.max_logins_per_account)
        self.auth_throttle = FailureThrottle(config.auth.throttle_failures, config.auth.throttle_window)
        # connections per address and pre-authentication parsing, shared by every transport
        self.transport_limits = SharedLimits.of(lambda: self.config)
        self.modules: dict[str, Module] = {}
        self.listeners: list[asyncio.Server] = []
        self.listening = Listeners()  # every listening socket by name: what an upgrade hands over
        self._connections: dict[Tracked, asyncio.Task[Any] | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._connection_tasks: set[asyncio.Task[Any]] = set()  # until serve_client returns
        self.metrics.track_sessions(lambda: self._connections)
        self.tiers: Tiers | None = None  # cache and ring statistics (`tiers.cache.stats`, `tiers.ring.stats`)
        self.directory: SessionDirectory | None = None  # set by the `directory` module
        self.reloads = 0  # configuration reloads applied (SIGHUP, `nitro reload`)
        self.bridge: Bridge | None = None  # plugins over TCP (nitro/bridge), set by running_server
        self.cluster: Cluster | None = None  # this node's cluster membership ([cluster] node; nitro/cluster/)
        # the admin channel, once up (`nitro upgrade` adds its command to it)
        self.admin: AdminChannel | None = None

    @property
    def domain(self) -> str:
        return self.config.server.domain

    def reload(self) -> ReloadReport:
        """Re-read the config file and apply what can change without a restart (nitro.ops.reload)."""
        return reload_config(self, make_tls_context)

    def load_modules(self, names: tuple[str, ...] = BUILTIN_MODULES) -> None:
        for name in names:
            self.modules[name] = load_module(self, name)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a background coroutine owned by the server (cancelled at shutdown)."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def track(self, session: Tracked) -> None:
        """Called from the connection's own task, which shutdown may have to cancel. A task registered with
        `connection_task` is cancelled from there while it runs, and not kept here: a TCP connection's task
        ends while its session is idle (nitro/transports/tcp_task.py), and a new one serves it later."""
        task = asyncio.current_task()
        self._connections[session] = None if task in self._connection_tasks else task

    def connection_task(self, task: asyncio.Task[Any]) -> None:
        """A connection's task: shutdown waits for it even after its session closed (it may still be in
        a handler's storage call, which must not outlive the storage scope)."""
        self._connection_tasks.add(task)
        task.add_done_callback(self._connection_tasks.discard)

    def untrack(self, session: Tracked) -> None:
        self._connections.pop(session, None)

    @property
    def connections(self) -> frozenset[Tracked]:
        return frozenset(self._connections)

    async def start_listeners(self) -> None:
        c2s = self.config.c2s
        await self._listen("c2s", c2s.port, None)
        if c2s.direct_tls_port and self.tls_context is not None:
            await self._listen("c2s-tls", c2s.direct_tls_port, self.tls_context)

    async def _listen(self, name: str, port: int, tls: ssl.SSLContext | None) -> None:
        """One c2s listener on the registry's sockets (bound here, or inherited from a predecessor)."""
        c2s = self.config.c2s
        loop = asyncio.get_running_loop()
        accept = connection_factory(self, self.transport_limits, direct_tls=tls is not None)

        async def start(sockets: list[Any]) -> Any:
            servers = [
                await loop.create_server(
                    accept,
                    sock=sock,
                    backlog=c2s.backlog,  # TLS is the connection's own (nitro/transports/tls_layer.py)
                )
                for sock in sockets
            ]
            self.listeners.extend(servers)
            what = "Direct TLS" if tls is not None else "STARTTLS"
            log.info("c2s (%s) listening on %s", what, ", ".join(_addresses(s) for s in servers))

            def stop() -> None:
                for server in servers:
                    server.close()

            return stop

        reuse = shares_ports(self.config)  # [server] workers: the node's processes bind the same ports
        sockets = self.listening.tcp(name, c2s.host, port, c2s.backlog, reuse_port=reuse)
        await self.listening.serve(name, sockets, start)

    async def shutdown(self) -> None:
        """Stop accepting, tell every client `<system-shutdown/>`, wait briefly, cancel the rest."""
        for listener in self.listeners:
            listener.close()
        # together: a client without stream management may get `[upgrade] proof_timeout` to prove it read
        await asyncio.gather(
            *(session.close(StreamError("system-shutdown")) for session in list(self._connections)),
            return_exceptions=True,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_GRACE
        while (self._connections or self._connection_tasks) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # connections leave on their own once their streams are closed
        # Past the grace period: cancel what is left and wait for it, so nothing still holds a storage
        # connection when the storage scope closes.
        leftovers = [
            task
            for task in [*self._connections.values(), *self._connection_tasks, *self._tasks]
            if task is not None
        ]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        for module in reversed(list(self.modules.values())):
            await module.stop()  # its tasks end while storage is still open
        for module in reversed(list(self.modules.values())):
            module.unload()
        self.transport_limits.preauth.close()
        for listener in self.listeners:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.wait_closed(), 1.0)


def _addresses(listener: asyncio.Server) -> str:
    return ", ".join(f"{sock.getsockname()[0]}:{sock.getsockname()[1]}" for sock in listener.sockets)


def _hits_and_misses(stats: Mapping[str, Mapping[str, int]]) -> dict[str, tuple[int, int]]:
    """A tier's per-kind counters as the metrics' tier source reads them."""
    return {kind: (counters.get("hits", 0), counters.get("misses", 0)) for kind, counters in stats.items()}


@asynccontextmanager
async def running_server(
    config: Config,
    listening: Listeners | None = None,
    before_listen: Callable[[Server], Awaitable[None]] | None = None,
) -> AsyncIterator[Server]:
    """Start storage, modules and listeners; on exit drain and stop in reverse order.

    `listening` carries the sockets inherited from a predecessor (an upgrade); `before_listen` runs once
    storage and modules are up and nothing listens yet (an upgrade's self-check)."""
    tls_context = make_tls_context(config)
    metrics = Metrics()
    wrap = (lambda sql: timed_storage(sql, metrics.storage_call)) if config.metrics.enabled else None
    async with open_storage(config, wrap_sql=wrap) as storage:
        server = Server(config, storage, tls_context, metrics)
        if listening is not None:
            server.listening = listening
        server.tiers = storage.tiers
        metrics.add_tier_source("cache", lambda: _hits_and_misses(storage.tiers.cache.stats))
        if storage.tiers.ring is not None:
            ring = storage.tiers.ring
            metrics.add_tier_source("ring", lambda: _hits_and_misses(ring.stats))
        async with serve_metrics(metrics, config.metrics, server.listening) as server.metrics_endpoint:
            # joins the cluster before serving; leaves after the drain
            cluster = cluster_member(server, server.sessions, server.delivery, storage.tiers.ring)
            async with cluster as server.cluster:
                server.load_modules(tuple(m for m in BUILTIN_MODULES if m not in config.modules.disabled))
                # From here until the shutdown is done, CPython starts no full collection of its own: the
                # pacer does them while serving, and at the end closing every session would otherwise
                # start one over all of them (~0.3 s after a 4,000-login storm) as clients wait.
                with without_full_collections(config.gc):
                    try:
                        if before_listen is not None:
                            await before_listen(server)
                        # the admin channel before the listeners
                        async with serve_admin(server, server.listening) as server.admin:
                            await server.start_listeners()
                            # [plugins] (XEP-0114); WebSocket, BOSH, discovery and the web client
                            async with (
                                serve_plugins(server, server.listening) as server.bridge,
                                serve_http(server, server.listening),
                            ):
                                server.listening.close_unclaimed()
                                with tuned_gc(config.gc):
                                    async with paced_gc(config.gc):
                                        yield server
                    finally:
                        await server.shutdown()
