"""Stanzas for resources on other nodes: one ordered queue per destination node, sent as NATS requests in
batches; the receiving node answers per stanza ("ok": written to the client, "gone": no such resource).

A batch with no answer is sent once more with the same stanza ids (the receiver drops what it already
delivered), then the node is taken as unreachable and each stanza goes to `fallback` (offline storage or a
bounce, RFC 6121 §8). One queue per destination keeps each sender's stanzas in the order it sent them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.msg import Msg

from nitro.cluster.link import LinkDown, NatsLink
from nitro.cluster.wire import WireError, decode, encode, subject_of
from nitro.xmpp.jid import JID, InvalidJID

log = logging.getLogger(__name__)

MAX_BATCH = 100
RECENT_IDS = 50_000  # per receiving node: stanza ids already delivered (a retry of one is dropped)


@dataclass(frozen=True, slots=True)
class Outgoing:
    id: str
    to: str
    xml: str


# (node, full JID, stanza XML, the node answered "gone") → offline storage or a bounce
Fallback = Callable[[str, str, str, bool], Awaitable[None]]


class Forwarder:
    """This node's side of sending: queues, batches, retries, fallback."""

    def __init__(
        self,
        link: NatsLink,
        cluster: str,
        node: str,
        boot: str,
        timeout: float,
        fallback: Fallback,
        unreachable: Callable[[str], None],
    ) -> None:
        self.link = link
        self.cluster = cluster
        self.node = node
        self.timeout = timeout
        self.fallback = fallback
        self.unreachable = unreachable
        # ids unique per process: an upgrade's successor continues the run (boot) but not its counter
        self._prefix = f"{node}/{boot}/{os.getpid()}/"
        self._ids = itertools.count(1)
        self._queues: dict[str, asyncio.Queue[Outgoing]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.fallbacks = 0
        self._closing = False

    def forward(self, node: str, to: JID, xml: str) -> None:
        queue = self._queues.get(node)
        if queue is None:
            queue = self._queues[node] = asyncio.Queue()
            task = asyncio.create_task(self._drain(node, queue), name=f"cluster-forward-{node}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.put_nowait(Outgoing(f"{self._prefix}{next(self._ids)}", str(to), xml))

    async def idle(self, deadline: float = 5.0) -> None:
        """Wait (bounded) until every queue is empty: shutdown sends what was accepted."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while any(not q.empty() for q in self._queues.values()) and loop.time() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._closing = True
        # A cancellation can be lost on its way through a library call (nats-py's request, Python 3.11's
        # wait_for when the awaited result comes at the same moment): cancelled again until every queue's
        # task has ended, never waited for forever.
        while self._tasks:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.wait(list(self._tasks), timeout=0.2)

    async def _drain(self, node: str, queue: asyncio.Queue[Outgoing]) -> None:
        while not self._closing:
            batch = [await queue.get()]
            while len(batch) < MAX_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._send(node, batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad batch must not stop the queue of a node
                log.exception("forwarding %d stanzas to node %s failed", len(batch), node)

    async def _send(self, node: str, batch: list[Outgoing]) -> None:
        payload = encode({"t": "deliver", "from": self.node, "items": [[o.id, o.to, o.xml] for o in batch]})
        statuses: list[str] | None = None
        for attempt in range(2):
            try:
                reply = decode(await self.link.request(subject_of(self.cluster, node), payload, self.timeout))
                found = reply.get("r")
                if isinstance(found, list) and len(found) == len(batch):
                    statuses = [str(s) for s in found]
                    break
                log.warning("node %s answered a batch of %d with %r", node, len(batch), reply)
            except (LinkDown, WireError) as exc:
                log.info("node %s: %s (attempt %d)", node, exc, attempt + 1)
                if not self.link.connected:
                    break  # NATS is down: no retry can go out
        answered = statuses is not None
        if statuses is None:
            self.unreachable(node)
            statuses = ["unreachable"] * len(batch)
        self.sent += statuses.count("ok")
        for outgoing, status in zip(batch, statuses, strict=True):
            if status != "ok":
                await self.fallback(node, outgoing.to, outgoing.xml, answered)
                self.fallbacks += 1  # counted once it is done (stored or routed)


class Receiver:
    """This node's side: delivers forwarded stanzas to its own sessions, each stanza id once."""

    def __init__(self, deliver_local: Callable[[JID, str], bool]) -> None:
        self.deliver_local = deliver_local
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.record: set[str] | None = None  # during an upgrade: every stanza id answered here
        self.received = 0
        self.duplicates = 0

    def handle(self, items: object) -> list[str]:
        if not isinstance(items, list):
            raise WireError("items is not a list")
        statuses: list[str] = []
        for item in items:
            try:
                stanza_id, to, xml = item
                full = JID.parse(str(to))
            except (TypeError, ValueError, InvalidJID):
                statuses.append("bad")
                continue
            if self.record is not None:
                self.record.add(str(stanza_id))
            if stanza_id in self._seen:
                self.duplicates += 1
                statuses.append("ok")  # delivered by an earlier attempt
                continue
            if self.deliver_local(full, str(xml)):
                self._seen[str(stanza_id)] = None
                if len(self._seen) > RECENT_IDS:
                    self._seen.popitem(last=False)
                self.received += 1
                statuses.append("ok")
            else:
                statuses.append("gone")
        return statuses

    def answered_elsewhere(self, ids: list[str]) -> None:
        """Stanza ids another process of this node answered (an upgrade's old one): not delivered again."""
        for stanza_id in ids:
            self._seen[str(stanza_id)] = None
        while len(self._seen) > RECENT_IDS:
            self._seen.popitem(last=False)


async def respond(msg: Msg, answer: dict[str, object]) -> None:
    if msg.reply:
        with contextlib.suppress(Exception):  # the requester may be gone; it falls back on its own
            await msg.respond(encode(answer))
