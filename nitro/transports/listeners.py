"""Every listening socket the server owns, by name (c2s, c2s-tls, http, https, metrics, admin, plugins, …):
bound here or inherited from a predecessor (zero-downtime upgrade), so an upgrade hands them all over as is.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

Stop = Callable[[], Awaitable[None] | None]  # stops accepting on a listener (its server's close)
Start = Callable[[list[socket.socket]], Awaitable[Stop]]  # accepts on sockets; returns how to stop


class Listeners:
    """name → the kernel sockets listening under that name (a host name may resolve to several addresses).

    A listener asks `tcp(name, host, port, backlog)` (or registers a socket it made with `add`): an inherited
    socket of that name is used as is, never re-bound, so connections waiting in its accept queue are kept.
    Each listener also registers how to stop accepting (`on_stop`), which an upgrade calls once the successor
    is ready; `dup` keeps copies so the old process can accept again if the successor dies.
    """

    def __init__(self, inherited: dict[str, list[socket.socket]] | None = None) -> None:
        self._inherited = dict(inherited or {})
        self.from_predecessor = bool(inherited)  # started by an upgrade
        self._sockets: dict[str, list[socket.socket]] = {}
        self._stops: dict[str, Stop] = {}
        self._starts: dict[str, Start] = {}
        self.handed_over = False  # a successor accepts on these sockets now

    @property
    def inheriting(self) -> bool:
        return bool(self._inherited)

    def take(self, name: str) -> list[socket.socket] | None:
        """The inherited sockets of `name` (registered now), or None."""
        sockets = self._inherited.pop(name, None)
        if sockets is not None:
            self._sockets[name] = sockets
            log.info("listener %s inherited (%s)", name, _describe(sockets))
        return sockets

    def tcp(
        self, name: str, host: str, port: int, backlog: int, reuse_port: bool = False
    ) -> list[socket.socket]:
        """Listening TCP sockets for `name`: the inherited ones, else bound on every address of `host`
        (with SO_REUSEPORT when `reuse_port`: the `[server] workers` of one node bind the same port)."""
        inherited = self.take(name)
        if inherited is not None:
            return inherited
        sockets: list[socket.socket] = []
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            seen: set[tuple[int, object]] = set()
            for family, kind, proto, _name, address in infos:
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(address)
                except OSError as exc:  # worded as asyncio's create_server words it
                    why = (exc.strerror or "").lower()
                    raise OSError(
                        exc.errno, f"error while attempting to bind on address {address!r}: {why}"
                    ) from None
                sock.listen(backlog)
                sock.setblocking(False)
                if port == 0:  # one ephemeral port for every address
                    port = sock.getsockname()[1]
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        self._sockets[name] = sockets
        return sockets

    def add(self, name: str, sockets: list[socket.socket]) -> None:
        self._sockets[name] = list(sockets)

    async def serve(self, name: str, sockets: list[socket.socket], start: Start) -> None:
        """Register `sockets` under `name` and accept on them with `start` (again after a failed upgrade)."""
        self._sockets[name] = list(sockets)
        self._starts[name] = start
        self._stops[name] = await start(list(sockets))

    async def serve_again(self, spare: dict[str, list[socket.socket]]) -> None:
        """Accept again on the duplicates kept by `dup` (the successor died after it was ready)."""
        for name, sockets in spare.items():
            start = self._starts.get(name)
            if start is None:
                close_all({name: sockets})
                continue
            try:
                await self.serve(name, sockets, start)
            except Exception:
                log.exception("listener %s could not accept again", name)
        self.handed_over = False

    def items(self) -> list[tuple[str, list[socket.socket]]]:
        return [(name, list(sockets)) for name, sockets in self._sockets.items()]

    def names(self) -> list[str]:
        return list(self._sockets)

    def dup(self) -> dict[str, list[socket.socket]]:
        """Duplicates of every socket: the same kernel sockets, kept open by whoever holds them."""
        return {name: [sock.dup() for sock in sockets] for name, sockets in self._sockets.items()}

    async def stop_accepting(self) -> None:
        """Close this process's servers on every listener (the kernel sockets live on in the successor)."""
        for name, stop in list(self._stops.items()):
            try:
                result = stop()
                if result is not None:
                    await result
            except Exception:
                log.exception("stopping listener %s failed", name)
        self._stops.clear()
        self.handed_over = True

    def close_unclaimed(self) -> None:
        """Inherited sockets no listener asked for (the new config dropped them): closed."""
        for name, sockets in self._inherited.items():
            log.warning("inherited listener %s is not configured any more; closing it", name)
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.close()
        self._inherited.clear()


def sites(runner: web.AppRunner, tls: ssl.SSLContext | None) -> Start:
    """Accepting on given sockets with the runner (aiohttp's SockSite); stopping closes only the sites."""

    async def start(sockets: list[socket.socket]) -> Stop:
        started = [web.SockSite(runner, sock, ssl_context=tls) for sock in sockets]
        for site in started:
            await site.start()

        async def stop() -> None:
            for site in started:
                with contextlib.suppress(RuntimeError):  # the runner was cleaned up already
                    await site.stop()
            if runner.server is not None:  # keep-alive connections close once their request is answered
                for connection in runner.server.connections:
                    connection.close()

        return stop

    return start


def close_after_handover(listening: Listeners) -> Any:
    """aiohttp middleware: once a successor accepts on our sockets, every response closes its connection, so
    a client's next request (a BOSH poll, a page) opens a new one, which reaches the successor."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        if listening.handed_over and not isinstance(response, web.WebSocketResponse):
            response.force_close()
        return response

    return middleware


def close_all(sockets: dict[str, list[socket.socket]]) -> None:
    for group in sockets.values():
        for sock in group:
            with contextlib.suppress(OSError):
                sock.close()


def _describe(sockets: list[socket.socket]) -> str:
    names = []
    for sock in sockets:
        try:
            name = sock.getsockname()
        except OSError:
            continue
        names.append(f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name))
    return ", ".join(names) or "?"
