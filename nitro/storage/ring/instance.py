"""One Redis instance of the ring: a redis.asyncio client (hiredis), health checks, admission fencing.

Health checks run in a thread of their own with a blocking client whose socket timeouts the kernel
enforces, so a busy event loop (a login storm) never makes a healthy instance look dead; only they
take an instance out, and an invalidation that could not be written (see `Ring.invalidate`).

An instance is *live* only after it was admitted: its `run_id` is known and our namespace on it holds
an epoch `<run_id>/<random>`. A returning or restarted instance is flushed (our keys only) and given a
new epoch before it is used again, so it never serves a value that changed while it was out. Every new
connection checks the run_id first (`_on_connect`): a restart between two health checks is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry as BlockingRetry

from nitro.config import RedisSection
from nitro.storage.errors import StorageUnavailable
from nitro.storage.ring.keys import KeySpace

log = logging.getLogger(__name__)

REDIS_ERRORS = (RedisError, OSError, TimeoutError)  # what a call to an instance may raise
_FLUSH_BATCH = 1000
ADMIT_TIMEOUT = 30.0  # admission may flush many keys; bounded, and the instance stays out meanwhile


class RingUnavailable(StorageUnavailable):
    """A ring instance did not answer in time (or is out): the caller falls back to SQL."""


def _run_id(info: Any) -> str:
    if isinstance(info, bytes):
        info = info.decode()
    if isinstance(info, str):
        for line in info.splitlines():
            if line.startswith("run_id:"):
                return line.split(":", 1)[1].strip()
        raise RedisConnectionError("INFO server without run_id")
    return str(info["run_id"])


class Instance:
    """A ring member; `on_change` is called (synchronously) whenever it goes live or out."""

    def __init__(self, url: str, weight: int, settings: RedisSection, keys: KeySpace) -> None:
        self.url = url
        self.keys = keys
        self.weight = weight
        self.settings = settings
        self.live = False
        self.failures = 0
        self.run_id: str | None = None
        self.epoch: str | None = None
        self.admissions = 0
        self.on_change: Callable[[Instance], None] = lambda _instance: None
        timeouts: dict[str, Any] = {
            "socket_timeout": settings.socket_timeout,
            "socket_connect_timeout": settings.socket_timeout,
            "retry": Retry(NoBackoff(), 0),  # a failure goes to the next tier, not into a retry loop
        }
        # Operations: every new connection first proves it reaches the admitted process.
        self.client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url, redis_connect_func=self._on_connect, **timeouts
        )
        # Admission, flushes and pub/sub: their own connections, not starved by (or fenced like) operations;
        # one retry, so a connection broken by a restart is simply replaced.
        self.control: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url, **{**timeouts, "retry": Retry(NoBackoff(), 1)}
        )
        # Health checks: blocking, in a thread of their own (see the module docstring).
        self.probe: redis.Redis = redis.Redis.from_url(
            url,
            socket_timeout=settings.health_timeout,
            socket_connect_timeout=settings.health_timeout,
            retry=BlockingRetry(NoBackoff(), 1),
        )
        self._prober = ThreadPoolExecutor(max_workers=1, thread_name_prefix="redis-health")

    def __repr__(self) -> str:
        return f"<Instance {self.url} {'live' if self.live else 'out'}>"

    async def _on_connect(self, conn: Connection) -> None:
        await conn.on_connect()
        await conn.send_command("INFO", "server")
        run_id = _run_id(await conn.read_response())
        if not self.live or run_id != self.run_id:
            if self.live:
                log.warning("redis %s restarted (run_id changed): out until flushed", self.url)
                self.take_out()
            raise RedisConnectionError(f"{self.url} is not admitted to the ring")

    async def call(self, operation: Callable[[redis.asyncio.Redis], Awaitable[Any]]) -> Any:
        """Run `operation` on this instance within socket_timeout; RingUnavailable if it fails (the
        caller goes to SQL; only health checks decide that the instance is out)."""
        if not self.live:
            raise RingUnavailable(f"redis {self.url} is out of the ring")
        try:
            async with asyncio.timeout(self.settings.socket_timeout):
                return await operation(self.client)
        except REDIS_ERRORS as exc:
            log.debug("redis %s: %s: %s", self.url, type(exc).__name__, exc)
            raise RingUnavailable(f"redis {self.url}: {type(exc).__name__}") from exc

    def failed(self, why: str) -> None:
        """One failed health check; `failures_before_out` in a row take the instance out."""
        self.failures += 1
        if self.live and self.failures >= self.settings.failures_before_out:
            log.warning("redis %s out of the ring after %d failures (%s)", self.url, self.failures, why)
            self.take_out()

    def take_out(self) -> None:
        """Out now (e.g. an invalidation could not be written): flushed before it is used again."""
        if self.live:
            self.live = False
            self.on_change(self)

    async def check(self) -> None:
        """One health check: INFO server within health_timeout; admit the instance if it is healthy."""
        loop = asyncio.get_running_loop()
        try:
            run_id = _run_id(await loop.run_in_executor(self._prober, self.probe.info, "server"))
            if self.live and run_id == self.run_id:
                self.failures = 0
                return
            if self.live:
                log.warning("redis %s restarted (run_id changed): flushing it", self.url)
                self.take_out()
            async with asyncio.timeout(ADMIT_TIMEOUT):
                await self._admit(run_id)
        except REDIS_ERRORS as exc:
            self.failed(f"health check: {type(exc).__name__}: {exc}")
            return
        self.failures = 0
        log.info("redis %s in the ring (epoch %s)", self.url, self.epoch)
        self.live = True
        self.on_change(self)

    async def _admit(self, run_id: str) -> None:
        """Join the epoch other nodes set for this very process, or flush and start a new one."""
        current = await self.control.get(self.keys.epoch)
        epoch = current.decode() if isinstance(current, bytes) else current
        if self.admissions == 0 and epoch is not None and epoch.startswith(f"{run_id}/"):
            self.epoch = epoch  # first sight: other nodes admitted this process; nothing changed under us
        else:
            # A returning instance (we could not write invalidations to it while it was out), a restarted
            # one (it may have loaded an old snapshot) or a fresh one: drop our namespace, then fence.
            await self.flush()
            self.epoch = f"{run_id}/{secrets.token_hex(8)}"
            await self.control.set(self.keys.epoch, self.epoch)
        self.run_id = run_id
        self.admissions += 1
        await self.client.connection_pool.disconnect()  # connections made before admission re-check

    async def flush(self) -> None:
        """Delete every key of our namespace (FLUSHDB would take other applications' keys too)."""
        await self.control.delete(self.keys.epoch)  # first: readers treat a missing epoch as "not admitted"
        batch: list[bytes] = []
        async for key in self.control.scan_iter(match=self.keys.pattern, count=_FLUSH_BATCH):
            batch.append(key)
            if len(batch) >= _FLUSH_BATCH:
                await self.control.unlink(*batch)
                batch.clear()
        if batch:
            await self.control.unlink(*batch)

    async def close(self) -> None:
        self._prober.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(*REDIS_ERRORS):
            self.probe.close()
        for client in (self.client, self.control):
            try:
                await client.aclose()
            except REDIS_ERRORS as exc:
                log.debug("closing %s: %s", self.url, exc)
