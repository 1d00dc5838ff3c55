"""A cluster member: joins (NATS link, name claimed in the ring), announces its sessions, forwards and
receives stanzas, watches the other nodes' heartbeats; `cluster_member` is its start/stop scope."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from lxml import etree
from nats.aio.msg import Msg

from nitro.cluster.fallback import undeliverable
from nitro.cluster.forward import Forwarder, Receiver, respond
from nitro.cluster.identity import NodeIdentity, live_members
from nitro.cluster.link import ClusterError, LinkDown, NatsLink
from nitro.cluster.sweeper import Member, Sweeper
from nitro.cluster.view import RemoteView
from nitro.cluster.wire import (
    Announced,
    WireError,
    decode,
    encode,
    parse,
    sessions_subject,
    stanza_text,
    subject_of,
)
from nitro.core.delivery import Delivery
from nitro.core.module import SessionEvent
from nitro.core.sessions import Sessions
from nitro.storage.ring.ring import Ring
from nitro.xmpp.errors import StreamError
from nitro.xmpp.jid import JID, InvalidJID

if TYPE_CHECKING:
    from nitro.core.context import Core, Session

log = logging.getLogger(__name__)

SNAPSHOT_CHUNK = 500
RequestHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]  # a request → its answer
INHERITED_BOOT = "NITRO_CLUSTER_BOOT"  # an upgrade's successor continues its predecessor's run (token)


class Cluster:
    """This node as a member of its cluster."""

    def __init__(self, core: Core, sessions: Sessions[Session], delivery: Delivery, ring: Ring) -> None:
        settings = core.config.cluster
        self.core = core
        self.settings = settings
        self.node = settings.node
        self.sessions = sessions
        self.delivery = delivery
        self.ring = ring
        self.link = NatsLink(settings, core.config.base_dir)
        inherited = os.environ.pop(INHERITED_BOOT, None)  # set by nitro/ops/upgrade.py for its successor
        self.identity = NodeIdentity(ring, self.node, settings.heartbeat_ttl, inherited)
        self.boot = self.identity.token
        self.view = RemoteView(self.node)
        self.forwarder = Forwarder(
            self.link,
            settings.name,
            self.node,
            self.boot,
            settings.request_timeout,
            self._fallback,
            self._unreachable,
        )
        self.receiver = Receiver(self._deliver_local)
        self.sweeper = Sweeper(Member(core, self.node, settings, self.link, ring, self.view, self.ping))
        self._announcements: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._undo: list[Callable[[], None]] = []
        self._joined = False  # the name is ours: until then requests are left to its holder
        # An upgrade: the successor holds the deliveries it hears (both processes are subscribed) until the
        # old process stops answering and says which it answered; the old one then says nothing more.
        self._held: list[Msg] | None = [] if inherited else None
        self.passive = False
        self.elsewhere: Callable[[JID, str], bool] | None = None  # the old process: to its successor
        self.handlers: dict[str, RequestHandler] = {}  # more requests (nitro/ops/resume_anywhere.py)
        self.moved_out: set[int] = set()  # id() of sessions handed to another member, stubs until forgotten

    # -- joining and leaving -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.link.connect()  # ClusterError: no NATS, wrong credentials
        # Listening before claiming: whoever holds the name answers pings for its own run (its token) by
        # then, so two processes starting at once with one name cannot both take it.
        await self.link.subscribe(subject_of(self.settings.name, self.node), self._on_request)
        if not await self.identity.claim():
            holder = await self.identity.holder() or {}
            if holder.get("token") == self.identity.token:
                log.info("node %s: taking the name over from the process this upgrade replaces", self.node)
            elif await self.ping(self.node, holder.get("token")):
                raise ClusterError(
                    f"node name {self.node!r} is already taken by a live node (pid {holder.get('pid')} on "
                    f"{holder.get('host')}): give this one another [cluster] node"
                )
            else:
                log.info(
                    "node %s: the previous run left its heartbeat behind; taking the name over", self.node
                )
            await self.identity.take_over()
        self._joined = True
        await self.link.subscribe(sessions_subject(self.settings.name), self._on_announcement)
        self.link.on_reconnect.append(self._rejoin)
        self.sessions.remote = self.view
        self.delivery.remote = self
        bus = self.core.bus
        self._undo += [
            bus.add("resource-bind", self._on_bind, priority=-900),
            bus.add("presence-changed", self._on_change),
            bus.add("resource-unbind", self._on_unbind, priority=-1000),
        ]
        self._spawn(self._announce_loop())
        self._spawn(self._heartbeat_loop())
        self._announce({"t": "hello"})
        log.info(
            "node %s joined cluster %s over NATS %s",
            self.node,
            self.settings.name,
            ", ".join(self.settings.nats),
        )

    async def stop(self) -> None:
        """After the listeners closed and the sessions ended (their unbinds announced)."""
        await self.forwarder.idle()
        self._announce({"t": "down"})  # not when passive: the successor serves this node's users
        await self._flush_announcements()
        for undo in self._undo:
            undo()
        self.sessions.remote = None
        self.delivery.remote = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.forwarder.close()
        if not self.passive:  # passive: the name (and its token) is the successor's
            await self.identity.release()
        await self.link.close()

    # -- an upgrade of this node (nitro/ops/upgrade.py, successor.py) ------------------------------

    @property
    def holding(self) -> bool:
        return self._held is not None

    def hand_over(self) -> list[str]:
        """The old process, drained: stop answering and announcing; the stanza ids it answered since the
        upgrade started (Receiver.record) go to the successor, which answers the rest."""
        self.passive = True
        handled = sorted(self.receiver.record or ())
        self.receiver.record = None
        return handled

    def take_back(self) -> None:
        """The successor died during the drain (before or after `hand_over`): this process answers again."""
        self.passive = False
        self.receiver.record = None

    async def take_charge(self, handled: list[str]) -> None:
        """The successor: the old process no longer answers; what it did not answer of the held deliveries
        is answered here, in the order heard, then every request; the others learn what this run holds."""
        held, self._held = self._held or [], None
        self.receiver.answered_elsewhere(handled)
        for msg in held:
            await self._on_request(msg)
        self._announce_snapshot()
        log.info("node %s: this process answers for it now (%d deliveries were held)", self.node, len(held))

    async def _rejoin(self) -> None:
        """NATS is back: tell the others who we are and what we hold (they may have left us out)."""
        self._announce({"t": "hello"})
        self._announce_snapshot()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what the core calls -----------------------------------------------------------------------

    def forward(self, to: JID, stanza: etree._Element) -> bool:
        """Delivery.remote: `to` on another node gets `stanza` in order, or it falls back (RFC 6121 §8)."""
        resource = self.view.resource(to)
        if resource is None:
            return False
        self.forwarder.forward(resource.node, to, stanza_text(stanza))
        return True

    async def members(self) -> list[dict[str, Any]]:
        """The live nodes (heartbeat in the ring) with their session counts, for `nitro status`."""
        self.identity.sessions = len(self.sessions)
        found = await live_members(self.ring)
        return [
            {
                "node": name,
                "sessions": int(member.get("sessions", 0)),
                "pid": member.get("pid"),
                "host": member.get("host"),
            }
            for name, member in sorted(found.items())
        ]

    async def ping(self, node: str, boot: str | None = None) -> bool:
        """Whether `node` answers (only its run `boot`, when given) within a second."""
        request: dict[str, Any] = {"t": "ping"} if boot is None else {"t": "ping", "boot": boot}
        try:
            reply = decode(
                await self.link.request(
                    subject_of(self.settings.name, node),
                    encode(request),
                    min(1.0, self.settings.request_timeout),
                )
            )
        except (LinkDown, WireError):
            return False
        return reply.get("r") == "pong"

    # -- sending side -----------------------------------------------------------------------

    async def _fallback(self, node: str, to: str, xml: str, answered: bool) -> None:
        if answered:  # that node does not hold it (any more): do not pick it again
            self.view.remove(node, to)
        # unanswered: the node is suspect (left out) and keeps its records for the sweeper
        try:
            await undeliverable(self.core, JID.parse(to), parse(xml))
        except (InvalidJID, WireError) as exc:
            log.warning("cannot fall back for %s: %s", to, exc)

    def _unreachable(self, node: str) -> None:
        if node not in self.view.suspect:
            log.warning("node %s does not answer: its resources are left out until it does", node)
        self.view.suspect.add(node)

    # -- receiving side -----------------------------------------------------------------------

    def _deliver_local(self, to: JID, xml: str) -> bool:
        if self.sessions.get(to) is None:  # during an upgrade's drain: perhaps bound on the successor
            return self.elsewhere is not None and self.elsewhere(to, xml)
        return self.delivery.deliver_local(to, parse(xml))

    async def _on_request(self, msg: Msg) -> None:
        if not self._joined or self.passive:
            return  # starting, and perhaps refused: the name's holder answers; passive: the successor does
        try:
            request = decode(msg.data)
            kind = request["t"]
            if kind == "deliver" and self._held is not None:
                self._held.append(msg)  # the old process of this upgrade answers, or leaves it to us
            elif kind == "deliver":
                await respond(msg, {"r": self.receiver.handle(request.get("items"))})
            elif kind == "ping":
                if request.get("boot", self.boot) == self.boot:  # a ping for another run: not us
                    await respond(msg, {"r": "pong", "boot": self.boot})
            elif kind == "snapshot":
                await respond(
                    msg, {"r": "ok", "boot": self.boot, "items": [a.to_json() for a in self._local()]}
                )
            elif kind in self.handlers:
                if self._held is None:  # an upgrade's successor, before it answers: the old process does
                    await respond(msg, await self.handlers[kind](request))
            elif kind == "kick":
                await self._kick(JID.parse(str(request.get("jid"))))
                await respond(msg, {"r": "ok"})
            else:
                await respond(msg, {"r": "error", "text": f"unknown request {kind!r}"})
        except (WireError, KeyError, InvalidJID) as exc:
            log.warning("bad cluster request: %s", exc)
            await respond(msg, {"r": "error", "text": str(exc)})
        except Exception:  # a bug of ours: the sender falls back after its timeout
            log.exception("cluster request failed")

    async def _kick(self, full: JID) -> None:
        """RFC 6120 §7.7.2.2 across nodes: the same full JID was bound on another node, which wins."""
        session = self.sessions.get(full)
        if session is not None:
            await session.close(StreamError("conflict", "replaced by a new session with this resource"))

    # -- announcements -----------------------------------------------------------------------

    def _local(self) -> list[Announced]:  # not a session that moved to another member (its stub)
        return [Announced.of(s.resource) for s in self.sessions if id(s) not in self.moved_out]

    def _announce(self, message: dict[str, Any]) -> None:
        if self.passive:
            return
        message["node"] = self.node
        message["boot"] = self.boot
        self._announcements.put_nowait(message)

    def _announce_session(self, session: Session) -> None:
        if session.closed:
            return
        self._announce({"t": "put", "r": Announced.of(session.resource).to_json()})

    def _announce_snapshot(self) -> None:
        local = [a.to_json() for a in self._local()]
        for part, start in enumerate(range(0, max(len(local), 1), SNAPSHOT_CHUNK)):
            self._announce({"t": "snapshot", "part": part, "items": local[start : start + SNAPSHOT_CHUNK]})

    async def _announce_loop(self) -> None:
        subject = sessions_subject(self.settings.name)
        while True:
            message = await self._announcements.get()
            await self.link.publish(subject, encode(message))  # lost while NATS is down: resent on rejoin
            self._announcements.task_done()

    async def _flush_announcements(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._announcements.join(), 2.0)

    async def _on_bind(self, event: SessionEvent) -> None:
        session = event.session
        session.watch_flags(lambda: self._announce_session(session))
        elsewhere = self.view.resource(session.jid)
        if elsewhere is not None:  # §7.7.2.2: the new session wins on every node
            self.view.remove(elsewhere.node, str(session.jid))
            with contextlib.suppress(LinkDown, WireError):
                await self.link.request(
                    subject_of(self.settings.name, elsewhere.node),
                    encode({"t": "kick", "jid": str(session.jid)}),
                    self.settings.request_timeout,
                )
        self._announce_session(session)

    def adopted(self, session: Session) -> None:
        """A session that came from another member: announced as held here, its flags followed."""
        session.watch_flags(lambda: self._announce_session(session))
        self._announce_session(session)

    async def _on_change(self, event: SessionEvent) -> None:
        self._announce_session(event.session)

    async def _on_unbind(self, event: SessionEvent) -> None:
        event.session.watch_flags(None)
        self._announce({"t": "del", "jid": str(event.session.jid)})

    async def _on_announcement(self, msg: Msg) -> None:
        try:
            message = decode(msg.data)
            node, boot, kind = str(message["node"]), str(message["boot"]), message["t"]
        except (WireError, KeyError) as exc:
            log.warning("bad cluster announcement: %s", exc)
            return
        if node == self.node:
            return
        known = self.view.boots.get(node)
        if known is not None and known != boot:  # that node restarted: what its last run held is gone
            await self.sweeper.node_gone(node, known)
        self.view.boots[node] = boot
        if kind == "hello":
            self._announce_snapshot()
            return
        try:
            self.view.apply(node, kind, message)
        except (WireError, KeyError, TypeError) as exc:
            log.warning("bad %s announcement from %s: %s", kind, node, exc)

    # -- heartbeat -----------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_ttl / 6
        while True:
            await asyncio.sleep(interval)
            self.identity.sessions = len(self.sessions)
            try:
                if not await self.identity.beat():
                    log.error("node name %s was taken by another process; this node keeps serving", self.node)
                await self.sweeper.check()
            except Exception:  # a ring or NATS hiccup: the next beat tries again
                log.exception("cluster heartbeat failed")


@asynccontextmanager
async def cluster_member(
    core: Core, sessions: Sessions[Session], delivery: Delivery, ring: Ring | None
) -> AsyncIterator[Cluster | None]:
    """This node in its cluster while the scope lasts (None when `[cluster] node` is not set)."""
    if not core.config.cluster.node:
        yield None
        return
    if ring is None:
        raise ClusterError("[cluster] needs the Redis ring ([redis] instances)")
    cluster = Cluster(core, sessions, delivery, ring)
    try:
        await cluster.start()
    except BaseException:
        await cluster.link.close()
        raise
    try:
        yield cluster
    finally:
        await cluster.stop()
