"""The observe spool in NATS JetStream (`[plugins.NAME] jetstream = "nats://…"`): the same role as the
file spool (nitro/bridge/spool.py), for servers whose disks do not survive them. Each event is published
to the stream `nitro_plugin_NAME` with its number in headers; an acknowledgement purges up to it; at start
the stream's messages are what the plugin has not acknowledged yet."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets

import nats
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

log = logging.getLogger(__name__)

SEQ = "Nitro-Seq"
EPOCH = "Nitro-Spool"


class JetStreamSpool:
    """Appends are published in order by one task; `ack` purges the stream up to the acknowledged event."""

    def __init__(self, connection: NATS, stream: str, subject: str) -> None:
        self._connection = connection
        self._js = connection.jetstream()
        self.stream = stream
        self._subject = subject
        self.epoch = secrets.token_hex(8)
        self.entries: list[tuple[int, bytes]] = []
        self.last_seq = 0
        self._stream_seq: dict[int, int] = {}  # our event number → the stream's sequence
        self._outbox: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._publisher = asyncio.create_task(self._publish())
        self.published = 0
        self._appended = 0

    @classmethod
    async def open(cls, url: str, plugin: str) -> JetStreamSpool:
        connection = await nats.connect(
            url, connect_timeout=5, allow_reconnect=True, max_reconnect_attempts=-1
        )
        name = re.sub(r"[^A-Za-z0-9_-]", "_", plugin)
        spool = cls(connection, f"nitro_plugin_{name}", f"nitro.plugin.{name}")
        try:
            info = await spool._js.stream_info(spool.stream)
        except NotFoundError:
            info = await spool._js.add_stream(name=spool.stream, subjects=[spool._subject])
        state = info.state
        for stream_seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
            try:
                message = await spool._js.get_msg(spool.stream, stream_seq)
            except NotFoundError:
                continue
            headers = message.headers or {}
            seq = int(headers.get(SEQ, "0"))
            spool.epoch = headers.get(EPOCH, spool.epoch)
            spool.entries.append((seq, message.data or b""))
            spool._stream_seq[seq] = stream_seq
            spool.last_seq = max(spool.last_seq, seq)
        log.info("plugin %s: JetStream spool %s holds %s events", plugin, spool.stream, len(spool.entries))
        return spool

    def append(self, seq: int, xml: bytes) -> None:
        self._outbox.put_nowait((seq, xml))
        self._appended += 1
        self.last_seq = seq

    async def _publish(self) -> None:
        while True:
            seq, xml = await self._outbox.get()
            headers = {SEQ: str(seq), EPOCH: self.epoch}
            while True:
                try:
                    ack = await self._js.publish(self._subject, xml, stream=self.stream, headers=headers)
                    break
                except Exception:  # NATS down: keep the order, try again
                    log.warning("JetStream spool %s: publishing failed; retrying", self.stream, exc_info=True)
                    await asyncio.sleep(1.0)
            self._stream_seq[seq] = ack.seq
            self.published += 1

    async def flushed(self, timeout: float = 5.0) -> None:
        """Until every appended event is in the stream (tests, shutdown); bounded by `timeout`."""
        async with asyncio.timeout(timeout):
            while self.published < self._appended:  # noqa: ASYNC110 (the publisher task counts, bounded)
                await asyncio.sleep(0.01)

    def ack(self, seq: int) -> None:
        done = [ours for ours in self._stream_seq if ours <= seq]
        if not done:
            return
        upto = max(self._stream_seq[ours] for ours in done)
        for ours in done:
            del self._stream_seq[ours]
        task = asyncio.create_task(self._purge(upto + 1))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _purge(self, before: int) -> None:
        try:
            await self._js.purge_stream(self.stream, seq=before)
        except Exception:
            log.warning(
                "JetStream spool %s: purge failed (resent later, deduplicated)", self.stream, exc_info=True
            )

    async def aclose(self) -> None:
        try:
            await self.flushed(2.0)
            async with asyncio.timeout(2.0):
                if self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
        except TimeoutError:
            log.warning("JetStream spool %s: closed with events not yet published", self.stream)
        self._publisher.cancel()
        await self._connection.close()

    def close(self) -> None:
        """The file spool's sync close; JetStream's is `aclose`."""
