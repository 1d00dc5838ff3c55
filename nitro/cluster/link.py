"""The NATS connection of a node: connect with the configured credentials, subscribe, request, publish.

nats-py's errors are translated here: a request that finds no node, times out or finds NATS down is a
`LinkDown`; a connection refused at start (no server, wrong credentials) is a `ClusterError` naming why.
NATS going away later is survived: nats-py reconnects on its own, and `connected` says where it stands.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from nitro.config_sections import ClusterSection

log = logging.getLogger(__name__)


class ClusterError(Exception):
    """The node cannot join its cluster (start-up refuses with this message)."""


class LinkDown(Exception):
    """A request got no answer: no such subscriber, timeout, or NATS unreachable."""


Handler = Callable[[Msg], Awaitable[None]]


class NatsLink:
    """One node's NATS client."""

    def __init__(self, settings: ClusterSection, base_dir: Path) -> None:
        self.settings = settings
        self.base_dir = base_dir
        self._nc: Client | None = None
        self.on_reconnect: list[Callable[[], Awaitable[None]]] = []

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def connect(self) -> None:
        settings = self.settings
        options: dict[str, Any] = {}
        if settings.nats_user:
            options["user"] = settings.nats_user
            options["password"] = settings.nats_password
        if settings.nats_token:
            options["token"] = settings.nats_token
        if settings.nats_creds:
            options["user_credentials"] = str(self.base_dir / settings.nats_creds)
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc) or type(exc).__name__)
            log.warning("NATS: %s", exc)

        async def on_disconnect() -> None:
            if self._nc is None:
                return  # our own close (shutdown, or the end of an upgrade): nothing is lost
            log.warning("NATS connection lost; reconnecting (stanzas for other nodes go to offline storage)")

        async def on_reconnect() -> None:
            log.info("NATS connection back")
            for callback in list(self.on_reconnect):
                await callback()

        # nats-py retries a refused first connection too: bounded here, and ended at once on an
        # authorization error (wrong credentials do not get better), with the reasons it reported.
        refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def on_first_error(exc: Exception) -> None:
            if not refused.done():
                await on_error(exc)
            if "authorization" in str(exc).lower() and not refused.done():
                refused.set_result(None)

        connecting = asyncio.ensure_future(
            self._connect(on_first_error, on_disconnect, on_reconnect, options)
        )
        try:
            waiters: set[asyncio.Future[Any]] = {connecting, refused}
            done, _ = await asyncio.wait(
                waiters,
                timeout=settings.connect_timeout * 2,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if connecting not in done:
                connecting.cancel()
                await asyncio.gather(connecting, return_exceptions=True)
                raise TimeoutError("no connection")
            self._nc = connecting.result()
        except Exception as exc:
            reason = "; ".join(dict.fromkeys(errors)) or str(exc) or type(exc).__name__
            raise ClusterError(f"cannot connect to NATS at {', '.join(settings.nats)}: {reason}") from exc

    async def _connect(
        self, on_error: Any, on_disconnect: Any, on_reconnect: Any, options: dict[str, Any]
    ) -> Client:
        settings = self.settings
        return await nats.connect(
            servers=list(settings.nats),
            name=f"nitro-{settings.node}",
            connect_timeout=settings.connect_timeout,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            ping_interval=max(1, int(settings.heartbeat_ttl / 3)),
            max_outstanding_pings=3,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            **options,
        )

    async def close(self) -> None:
        if self._nc is not None:
            nc, self._nc = self._nc, None
            try:
                await nc.drain()
            except Exception:  # already closed or NATS gone: nothing left to flush
                log.debug("NATS drain failed", exc_info=True)
                await nc.close()

    def _client(self) -> Client:
        if self._nc is None:
            raise LinkDown("not connected to NATS")
        return self._nc

    async def subscribe(self, subject: str, handler: Handler) -> None:
        await self._client().subscribe(subject, cb=handler)

    async def request(self, subject: str, data: bytes, timeout: float) -> bytes:
        nc = self._client()
        if not nc.is_connected:
            raise LinkDown("NATS is unreachable")
        try:
            reply = await nc.request(subject, data, timeout=timeout)
        except nats.errors.NoRespondersError as exc:
            raise LinkDown(f"no node listens on {subject}") from exc
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            raise LinkDown(f"no answer on {subject} within {timeout}s") from exc
        except nats.errors.Error as exc:
            raise LinkDown(f"NATS: {exc}") from exc
        return bytes(reply.data)

    async def publish(self, subject: str, data: bytes) -> bool:
        """Publish if connected; False when NATS is down (announcements are re-sent on reconnect)."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            return False
        try:
            await nc.publish(subject, data)
        except nats.errors.Error as exc:
            log.debug("NATS publish on %s failed: %s", subject, exc)
            return False
        return True
