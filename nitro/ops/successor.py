"""A zero-downtime upgrade, from the successor's side: take the listening sockets from the old process, check
itself (storage, Redis, TLS material, plugins' modules) before accepting, report ready, then adopt the
sessions the old process hands over and deliver what it forwards; a client resuming a session still in the
old process pulls it here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from typing import TYPE_CHECKING, Any

from lxml import etree

from nitro.c2s.session import ClientSession
from nitro.core.module import ResumeRequest
from nitro.core.router import StanzaEvent
from nitro.ops.adopt import FORWARDED, adopt, deliver_forwarded
from nitro.ops.check_plugins import check_plugins
from nitro.ops.handover import Channel, HandoverClosed, HandoverError
from nitro.ops.held import HeldStanzas
from nitro.ops.shadow_copies import ShadowCopies
from nitro.ops.upgrade_progress import HANDOVER_FD
from nitro.storage.errors import StorageError
from nitro.transports.bosh_move import BOSH_WANTED, BoshWanted

if TYPE_CHECKING:
    from nitro.server import Server

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 30.0
WANT_TIMEOUT = 3.0  # seconds a resuming client waits for its session to come over from the old process
# … and at most this long while the old process still holds a resource of its user: the session may be in
# a `sessions` message not read yet (a busy successor adopts behind its socket's backlog)
WANT_TIMEOUT_IN_TRANSIT = 20.0
WANT_STEP = 0.1  # how often that longer wait looks at what the old process still holds
GONE_WAIT = 5.0  # seconds an upgrade socket closed early waits for the old process to be seen gone


def refuse_early(reason: str) -> None:
    """Started as a successor but cannot even read the config: tell the old process why (best effort,
    synchronous: no event loop yet)."""
    value = os.environ.get(HANDOVER_FD, "")
    if not value.isdigit():
        return
    body = json.dumps({"type": "failed", "reason": reason}).encode()
    with contextlib.suppress(OSError), socket.socket(fileno=int(value)) as sock:
        sock.settimeout(5.0)
        sock.sendall(struct.pack(">I", len(body)) + body)


class NotReady(Exception):
    """The self-check failed: the successor must not accept."""


class Predecessor:
    """The old process, as the successor talks to it."""

    def __init__(
        self, channel: Channel, generation: int, inherited: dict[str, list[socket.socket]], old_pid: int = 0
    ) -> None:
        self.channel = channel
        self.old_pid = old_pid  # the old process (our parent), to tell a death from a closed socket
        self.copies = ShadowCopies()  # of its sessions, adopted from if it dies mid-drain
        self.promoted = 0  # copies adopted when it died
        self.held: HeldStanzas | None = None  # stanzas forwarded ahead of their session
        self.generation = generation
        self.inherited = inherited
        self.adopted = 0
        self.forwarded = 0
        self.sent_back = 0  # messages for users still in the old process, sent there
        self.expected = 0  # sessions in the old process when its drain started
        self.left = 0  # of those, closed there (no stream management to move them with)
        self.done = False
        self.gone = False
        # previd → resolved with the session once it is here (a resuming client waits for it)
        self._arrived: dict[str, asyncio.Future[ClientSession | None]] = {}
        self._on_old: dict[str, set[str]] = {}  # bare JID → its resources still in the old process

    @classmethod
    async def connect(cls) -> Predecessor | None:
        """The old process that started us (None when started by hand); HandoverError on a bad hello."""
        value = os.environ.pop(HANDOVER_FD, None)
        if value is None:
            return None
        if not value.isdigit():
            raise HandoverError(f"{HANDOVER_FD}={value!r} is not a descriptor")
        channel = Channel(socket.socket(fileno=int(value)))
        try:
            message, sockets = await channel.receive(HELLO_TIMEOUT)
        except HandoverError:
            channel.close()
            raise
        if message["type"] != "hello":
            channel.close()
            raise HandoverError(f"expected hello, got {message['type']}")
        inherited: dict[str, list[socket.socket]] = {}
        index = 0
        for name, count in message["listeners"]:
            inherited[name] = sockets[index : index + count]
            index += count
        log.info("upgrade: generation %d; inherited listeners %s", message["generation"], sorted(inherited))
        return cls(channel, message["generation"], inherited, os.getppid())

    async def check(self, server: Server) -> None:
        """Before accepting: the storage answers, every Redis instance answers, TLS material is loaded, and
        every `inprocess`/`process` plugin's module can be found."""
        try:
            async with asyncio.timeout(
                server.config.storage.connect_timeout + server.config.storage.query_timeout
            ):
                await server.storage.accounts.count()
        except (StorageError, TimeoutError) as exc:
            raise NotReady(f"storage does not answer: {exc}") from exc
        ring = server.tiers.ring if server.tiers is not None else None
        if ring is not None:
            await ring.check_all()
            down = [instance.url for instance in ring.instances if not instance.live]
            if down:
                raise NotReady(f"Redis unreachable: {', '.join(down)}")
        if server.config.c2s.require_encryption and server.tls_context is None:
            raise NotReady("TLS is required but no certificate is loaded")
        wrong = [f.text for f in check_plugins(server.config) if f.level == "error"]
        if wrong:  # a plugin its own supervisor could not start (e.g. its module is not importable)
            raise NotReady("; ".join(wrong))

    async def ready(self) -> None:
        await self.channel.send({"type": "ready", "pid": os.getpid()})

    async def failed(self, reason: str) -> None:
        with contextlib.suppress(HandoverError):
            await self.channel.send({"type": "failed", "reason": reason})
        self.channel.close()

    def status(self) -> dict[str, Any]:
        return {
            "adopted": self.adopted,
            "expected": self.expected,
            "left": self.left,
            "forwarded": self.forwarded,
            "shadowed": len(self.copies),
            "promoted": self.promoted,
            "held": 0 if self.held is None else self.held.count,
            "done": self.done,
            "gone": self.gone,
        }

    async def serve(self, server: Server) -> None:
        """Adopt what the old process hands over until it is done or gone; garbage drops it (logged)."""
        undo = server.bus.add("sm-resume", lambda request: self._pull(request), priority=-1000)
        undo_offline = server.bus.add("message/offline", self._to_old, priority=1000)
        undo_bosh = server.bus.add(BOSH_WANTED, self._want_bosh)
        self.held = held = HeldStanzas(server)
        try:
            while True:
                message, _fds = await self.channel.receive()
                kind = message["type"]
                if kind == "sessions":
                    await self._adopt(server, message["sessions"])
                elif kind == "online":
                    self.expected = len(message["jids"])
                    for jid in message["jids"]:
                        self._on_old.setdefault(jid.partition("/")[0], set()).add(jid)
                elif kind == "left":
                    self.left += len(message["jids"])
                    for jid in message["jids"]:
                        self.copies.drop_jid(jid)
                        await self._gone_there(jid)
                elif kind in ("shadow", "journal") and self.done:
                    continue  # trailing its `done`: nothing is left there to copy
                elif kind == "shadow":
                    self.copies.add(message["sessions"])
                elif kind == "journal":
                    bound, ended = self.copies.apply(message["entries"])
                    for jid in bound:  # bound there during the drain: still to come over
                        self._on_old.setdefault(jid.partition("/")[0], set()).add(jid)
                    for jid in ended:
                        await self._gone_there(jid)
                elif kind == "deliver":
                    self.forwarded += 1
                    if self._early(message["to"]):  # its session is on its way: after it, in order
                        held.hold(message["to"], message["stanza"])
                        continue
                    try:
                        await deliver_forwarded(server, message["to"], message["stanza"])
                    except Exception:  # one stanza's routing error never stops the adoption
                        log.exception("upgrade: a stanza from the old process was not delivered")
                elif kind == "cluster" and server.cluster is not None:
                    await server.cluster.take_charge([str(i) for i in message["handled"]])
                elif kind == "done":
                    self.done = True
                    self.copies.clear()
                    await held.release_all()
                    log.info(
                        "upgrade: the old process is done (%d moved, %d closed there)",
                        message["moved"],
                        message["closed"],
                    )  # what it still forwards until it exits (its socket closes) is delivered here
                else:
                    raise HandoverError(f"unexpected {kind} from the old process")
        except HandoverError as exc:
            if not self.done:
                await self._gone_early(server, str(exc) if not isinstance(exc, HandoverClosed) else "")
        finally:
            await held.release_all()
            if server.cluster is not None and server.cluster.holding:  # it went before handing the node over
                await server.cluster.take_charge([])
            undo()
            undo_offline()
            undo_bosh()
            self._on_old.clear()
            self.channel.close()
            for future in self._arrived.values():
                if not future.done():
                    future.set_result(None)

    async def _gone_early(self, server: Server, why: str) -> None:
        """The upgrade socket closed (or broke) before `done`. If the old process died, what it still held is
        adopted from the shadow copies; if it lives on, it keeps its sessions (it rolls back)."""
        if not await self._old_dead():
            self.gone = True
            log.warning(
                "upgrade: the old process %d dropped the upgrade socket (%s) but runs on; %d sessions here",
                self.old_pid,
                why or "closed",
                self.adopted,
            )
            self.copies.clear()
            return
        promoted, ended = await self.copies.take_over(server)
        self.gone = True
        for session in promoted:  # clients whose <resume/> came while it was dying
            future = None if session.sm is None else self._arrived.pop(session.sm.id, None)
            if future is not None and not future.done():
                future.set_result(session)
        self.promoted = len(promoted)
        self.adopted += len(promoted)
        self.left += ended
        self._on_old.clear()
        log.warning(
            "upgrade: the old process died mid-drain (%s): %d sessions had come over, %d adopted from their "
            "shadow copies (resumable), %d ended (unavailable sent)",
            why or "its upgrade socket closed",
            self.adopted - len(promoted),
            len(promoted),
            ended,
        )

    async def _old_dead(self) -> bool:
        """Whether the old process (our parent) has died: we were re-parented, or its pid is gone."""
        if self.old_pid <= 1:
            return False
        loop = asyncio.get_running_loop()
        end = loop.time() + GONE_WAIT
        while True:
            if os.getppid() != self.old_pid:
                return True
            try:
                os.kill(self.old_pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            if loop.time() >= end:
                return False
            await asyncio.sleep(0.05)

    def _early(self, to: str) -> bool:
        """A forwarded stanza for a full JID whose session is still to come over (or stanzas for it are
        held already: it goes behind them)."""
        if self.held is not None and self.held.holding(to):
            return True
        bare, _, resource = to.partition("/")
        return bool(resource) and to in self._on_old.get(bare, ())

    async def _gone_there(self, jid: str) -> None:
        """Ended in the old process without moving: stanzas held for it are routed."""
        self._left(jid)
        if self.held is not None:
            await self.held.release(jid)

    async def _adopt(self, server: Server, sessions: list[dict[str, Any]]) -> None:
        ids: list[str] = []
        refused: list[str] = []
        for data in sessions:
            session_id = str(data.get("id", ""))
            try:
                session = await adopt(server, data)
            except Exception as exc:
                log.warning("upgrade: session %s not adopted: %r", session_id, exc)
                refused.append(session_id)
                continue
            ids.append(session_id)
            self.adopted += 1
            self.copies.drop(session_id)
            self._left(str(session.jid))
            if self.held is not None:
                await self.held.release(str(session.jid))  # what came ahead of it, before anything after
            if session.sm is not None:
                future = self._arrived.pop(session.sm.id, None)
                if future is not None and not future.done():
                    future.set_result(session)
        await self.channel.send({"type": "adopted", "ids": ids, "refused": refused})

    def _left(self, jid: str) -> None:
        bare = jid.partition("/")[0]
        resources = self._on_old.get(bare)
        if resources is not None:
            resources.discard(jid)
            if not resources:
                del self._on_old[bare]

    async def _to_old(self, event: StanzaEvent) -> bool:
        """A message this process would store offline for a user whose sessions are still in the old
        process: sent there instead (it delivers, or stores it if they have gone meanwhile)."""
        if event.to is None or str(event.to.bare) not in self._on_old or self.done or self.gone:
            return False
        if FORWARDED.get():
            return False  # it came from there: stored here
        stanza = etree.tostring(event.stanza, encoding="unicode")
        try:
            await self.channel.send({"type": "deliver", "to": str(event.to), "stanza": stanza})
        except HandoverError:
            return False
        self.sent_back += 1
        return True

    async def _pull(self, request: ResumeRequest) -> bool:
        """A `<resume/>` for a session not here (yet): ask the old process for it, wait briefly."""
        if request.found is not None or self.done or self.gone or not request.previd:
            return False
        future = self._arrived.setdefault(request.previd, asyncio.get_running_loop().create_future())
        try:
            with contextlib.suppress(HandoverError):  # dying: its shadow copy may be adopted meanwhile
                await self.channel.send({"type": "want", "previd": request.previd})
            found = await self._arrival(future, str(request.user.bare))
        finally:
            self._arrived.pop(request.previd, None)
        request.found = found
        return found is not None

    async def _arrival(self, future: asyncio.Future[ClientSession | None], user: str) -> ClientSession | None:
        """The session once adopted; None after WANT_TIMEOUT, or, while the old process still holds a
        resource of `user` (the session may be on its way), after WANT_TIMEOUT_IN_TRANSIT."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not future.done():
            waited = loop.time() - started
            if waited >= WANT_TIMEOUT_IN_TRANSIT or (waited >= WANT_TIMEOUT and user not in self._on_old):
                return None
            await asyncio.wait([future], timeout=WANT_TIMEOUT if waited < WANT_TIMEOUT else WANT_STEP)
        return future.result()

    async def _want_bosh(self, wanted: BoshWanted) -> bool:
        """A BOSH request for a sid not here: its session may still be in the old process; ask for it now
        (the BOSH service waits briefly for it to arrive). False when there is nobody left to ask."""
        if self.done or self.gone:
            return False
        try:
            await self.channel.send({"type": "want", "previd": wanted.sid})
        except HandoverError:
            return False
        return True

    def close(self) -> None:
        self.channel.close()
