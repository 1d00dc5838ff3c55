"""A zero-downtime upgrade, from the old process's side: spawn the successor, hand it every listening socket,
wait for it to be ready (or kill it and go on serving: rollback), stop accepting, drain the sessions at a
paced rate (resumable ones move to the successor, the rest get `<system-shutdown/>`), then let the old exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lxml import etree

from nitro.c2s.session import ClientSession
from nitro.cluster.node import INHERITED_BOOT
from nitro.ops import sdnotify
from nitro.ops.adopt import adopt, deliver_forwarded
from nitro.ops.channel import pid_path
from nitro.ops.drain_closes import Closes
from nitro.ops.forwarding import forwarder, offline_to, to_successor
from nitro.ops.handover import Channel, HandoverError
from nitro.ops.pidfile import write_pid_file
from nitro.ops.shadow import Journal
from nitro.ops.upgrade_progress import GENERATION, HANDOVER_FD, Outcome, Progress, generation
from nitro.transports import bosh_move
from nitro.transports.listeners import Listeners, close_all
from nitro.xmpp.errors import StreamError

if TYPE_CHECKING:
    from nitro.server import Server

log = logging.getLogger(__name__)

PLUGIN_SETTLE = 2.0  # seconds the old process waits for its plugins to answer what they were sent
BUSY_WAIT = 2.0  # seconds the drain waits for a session to finish handling an input before it retries it
BATCHES_PER_SECOND = 10
SESSIONS_PER_MESSAGE = 50  # exported sessions per message on the upgrade socket (each well under its limit)


class Upgrader:
    """One server's upgrades: at most one at a time; `finished` is set once this process should exit."""

    def __init__(
        self,
        server: Server,
        listeners: Listeners,
        exit_now: Callable[[], None],
        busy: Callable[[], bool] = lambda: False,
        worker: int = 0,
    ) -> None:
        self.server = server
        self.worker = worker  # [server] workers: the successor serves as this worker (nitro/ops/rolling.py)
        self.busy = busy  # e.g. still taking over from a predecessor: an upgrade now is refused
        self.listeners = listeners
        self.exit_now = exit_now
        self.progress = Progress()
        self._lock = asyncio.Lock()
        self._channel: Channel | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._moved: dict[str, tuple[ClientSession, dict[str, Any], list[etree._Element]]] = {}
        self._adopted: dict[str, asyncio.Event] = {}
        self._wanted: asyncio.Queue[str] = asyncio.Queue()
        self._journal: Journal | None = None  # the successor's shadow copies of what is still here

    def progress_dict(self) -> dict[str, Any]:
        return self.progress.as_dict()

    @property
    def under_way(self) -> bool:
        return self._lock.locked() or self.busy()

    def on_signal(self) -> None:
        """SIGUSR2: start an upgrade; its outcome goes to the log."""
        if self.under_way:
            log.warning("upgrade requested by SIGUSR2 refused: one is already under way")
            return
        self.server.spawn(self._logged())

    async def _logged(self) -> None:
        outcome = await self.run()
        log.info("upgrade requested by SIGUSR2: %s", outcome.value)

    async def run(self) -> Outcome:
        if self.under_way:
            return Outcome.UNDER_WAY
        async with self._lock:
            return await self._run()

    async def _run(self) -> Outcome:
        settings = self.server.config.upgrade
        self.progress = Progress(state="spawning", started=time.monotonic())
        sdnotify.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        channel = Channel(ours)
        if (cluster := self.server.cluster) is not None:
            cluster.receiver.record = set()  # what this process answers while both are subscribed
        self._channel = channel
        try:
            self._process = await self._spawn(theirs)
        except OSError as exc:
            theirs.close()
            return await self._roll_back(f"cannot start the successor: {exc}")
        theirs.close()
        self.progress.successor = self._process.pid
        self.progress.state = "checking"
        log.info("upgrade: successor %d started; handing over %s", self._process.pid, self.listeners.names())
        try:
            items = self.listeners.items()
            await channel.send(
                {
                    "type": "hello",
                    "generation": generation() + 1,
                    "listeners": [[name, len(sockets)] for name, sockets in items],
                },
                [sock.fileno() for _name, sockets in items for sock in sockets],
            )
            message, _ = await channel.receive(settings.ready_timeout)
        except HandoverError as exc:
            return await self._roll_back(f"successor not ready: {exc}")
        if message["type"] != "ready":
            reason = message.get("reason") if message["type"] == "failed" else f"sent {message['type']}"
            return await self._roll_back(f"successor failed its check: {reason}")
        # Ready: from now on the successor accepts; this process stops, keeping duplicates of the sockets.
        spare = self.listeners.dup()
        await self.listeners.stop_accepting()
        sdnotify.notify(f"MAINPID={self._process.pid}", "READY=1")
        log.info("upgrade: successor %d is ready and accepting; draining", self._process.pid)
        self.progress.state = "draining"
        try:
            await self._drain(channel)
        except (
            Exception
        ) as exc:  # HandoverError: the successor died or broke the protocol; anything else: ours
            if not isinstance(exc, HandoverError):
                log.exception("upgrade: the drain failed")
            log.error("upgrade: the successor went away during the drain (%s); taking over again", exc)
            await self._take_over_again(spare)
            self.progress.state = "rolled-back"
            self.progress.reason = f"successor died during the drain: {exc}"
            sdnotify.notify(f"MAINPID={os.getpid()}", "READY=1")
            return Outcome.ROLLED_BACK
        close_all(spare)
        self.progress.state = "done"
        log.info(
            "upgrade: drained (%d sessions moved, %d closed); exiting",
            self.progress.moved,
            self.progress.closed,
        )
        self.exit_now()
        return Outcome.DONE

    async def _spawn(self, theirs: socket.socket) -> asyncio.subprocess.Process:
        config = self.server.config
        command = list(config.upgrade.command) or [sys.executable, "-m", "nitro"]
        if config.file is not None:
            command += ["--config", str(config.file)]
        command.append("serve")
        if self.worker:
            command += ["--worker", str(self.worker)]
        env = {**os.environ, HANDOVER_FD: str(theirs.fileno()), GENERATION: str(generation() + 1)}
        if self.server.cluster is not None:  # the successor continues this run in the cluster
            env[INHERITED_BOOT] = self.server.cluster.boot
        return await asyncio.create_subprocess_exec(*command, pass_fds=(theirs.fileno(),), env=env)

    async def _roll_back(self, reason: str) -> Outcome:
        """Before ready: the successor is killed, this process goes on as if nothing happened."""
        log.error("upgrade rolled back: %s; this process (%d) goes on serving", reason, os.getpid())
        if self.server.cluster is not None:
            self.server.cluster.receiver.record = None
        await self._kill_successor()
        if self._channel is not None:
            self._channel.close()
        self.progress.state = "rolled-back"
        self.progress.reason = reason
        sdnotify.notify("READY=1")
        return Outcome.ROLLED_BACK

    async def _kill_successor(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 10.0)

    # -- the drain ---------------------------------------------------------------------------------------

    async def _drain(self, channel: Channel) -> None:
        settings = self.server.config.upgrade
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.drain_deadline
        reader = asyncio.create_task(self._read(channel))
        # what this process would store offline goes to the successor, where its user is now or will be
        undo_offline = self.server.bus.add("message/offline", offline_to(channel), priority=1000)
        if (cluster := self.server.cluster) is not None:  # deliveries from other nodes for the successor
            cluster.elsewhere = to_successor(self.server, channel)
        try:
            pending = self._to_drain()
            self.progress.to_move = len(pending)
            # where the successor sends what it would otherwise store offline for these (RFC 6121 §8.5.2)
            await channel.send({"type": "online", "jids": [str(session.jid) for session in pending]})
            self._journal = Journal(self.server, channel)  # if this process is killed, it adopts from them
            await self._journal.start(pending)
            closes = Closes(self._close, lambda jids: channel.send({"type": "left", "jids": jids}))
            per_batch = max(1, round(settings.drain_rate / BATCHES_PER_SECOND))
            interval = per_batch / settings.drain_rate  # the pace: drain_rate sessions per second
            while pending or not self._wanted.empty():
                if reader.done():
                    reader.result()  # raises the HandoverError that ended it
                    raise HandoverError("the successor closed the upgrade socket")
                wanted = self._take_wanted(pending)
                late = loop.time() >= deadline
                batch = wanted + pending[: len(pending) if late else per_batch]
                del pending[: len(pending) if late else per_batch]
                if late:
                    log.warning("upgrade: drain deadline passed; %d sessions handled at once", len(batch))
                closes.reap()
                retry = await self._move(channel, batch, closes, late=late)
                pending.extend(retry)
                pending.extend(s for s in self._to_drain() if s not in pending)  # logged in meanwhile
                if pending or not self._wanted.empty():
                    await self._pause(interval)
            await closes.wait()
            self._journal.stop()  # every session moved or closed: nothing left to copy
            await self._wait_adopted(reader, min(30.0, max(1.0, deadline - loop.time() + 5.0)))
            if (bridge := self.server.bridge) is not None:  # replies of its plugins to moved sessions
                await bridge.settle(PLUGIN_SETTLE)  # still follow them, before the socket closes
            if cluster is not None:  # the successor answers for the node now
                await channel.send({"type": "cluster", "handled": cluster.hand_over()})
            await channel.send({"type": "done", "moved": self.progress.moved, "closed": self.progress.closed})
        finally:
            if self._journal is not None:
                self._journal.stop()
            undo_offline()
            if cluster is not None:
                cluster.elsewhere = None
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, HandoverError):
                await reader
        await self._close_negotiations()

    async def _pause(self, interval: float) -> None:
        """Between batches; a session a resuming client wants (on the successor) cuts it short."""
        loop = asyncio.get_running_loop()
        end = loop.time() + interval
        while loop.time() < end and self._wanted.empty():  # noqa: ASYNC110
            await asyncio.sleep(min(0.02, interval))

    def _to_drain(self) -> list[ClientSession]:
        """The sessions to hand over or close, those bound first first."""
        return [
            session
            for session in self.server.sessions
            if isinstance(session, ClientSession)
            and session.forward is None
            and (session.established or session.detached)
        ]

    def _take_wanted(self, pending: list[ClientSession]) -> list[ClientSession]:
        wanted: list[ClientSession] = []
        while not self._wanted.empty():
            previd = self._wanted.get_nowait()
            for session in pending:
                if bosh_move.named(session, previd):
                    pending.remove(session)
                    wanted.append(session)
                    break
        return wanted

    async def _move(
        self, channel: Channel, batch: list[ClientSession], closes: Closes, *, late: bool
    ) -> list[ClientSession]:
        """Hand the resumable sessions of `batch` to the successor, start closing the others (beside the
        drain: each may wait for its client's proof of reading); those still handling an input are returned
        to be tried again."""
        exported: list[dict[str, Any]] = []
        retry: list[ClientSession] = []
        closing: list[ClientSession] = []
        for session in batch:
            if session.closed or session.forward is not None:
                continue
            bosh = bosh_move.carried_by_bosh(session)  # a BOSH session moves with or without XEP-0198
            if not bosh and (session.sm is None or not session.sm.resumable):
                closing.append(session)
                continue
            # exported 'h' must count every handled stanza; a BOSH request is not half handled
            settling = session.busy or session.acks_held > 0 or bosh_move.settling(session)
            if settling and not late:
                retry.append(session)
                continue
            if settling:
                await self._until_idle(session)
            if bosh and bosh_move.settling(session):  # still inside a request at the deadline
                if session.sm is None or not session.sm.resumable:
                    closing.append(session)
                    continue
                bosh = False  # its BOSH session ends here; its client resumes (XEP-0198) on a new one
            if self._journal is not None:
                self._journal.moved(session)  # its export supersedes its shadow copy
            data = session.export()  # nothing awaited from here to hand_off: no stanza in between
            if bosh:
                data["bosh"] = bosh_move.hand_over(session)
            kept: list[etree._Element] = []
            forward = forwarder(self.server, channel, str(session.jid), kept)
            transport = session.hand_off(forward)
            self._moved[session.id] = (session, data, kept)
            self._adopted[session.id] = asyncio.Event()
            session.log.info("handed to the successor")
            self._close_later(session.id, transport)
            exported.append(data)
        for start in range(0, len(exported), SESSIONS_PER_MESSAGE):  # a deadline's batch can be every session
            await channel.send(
                {"type": "sessions", "sessions": exported[start : start + SESSIONS_PER_MESSAGE]}
            )
        for session in closing:  # out of the registry now: never drained twice, what arrives is stored
            self.server.sessions.remove(session)
        closes.start(closing)
        return retry

    async def _until_idle(self, session: ClientSession) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + BUSY_WAIT
        while (session.busy or session.acks_held > 0 or bosh_move.settling(session)) and loop.time() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    def _close_later(self, session_id: str, transport: Any) -> None:
        """Close the old connection once the successor registered the session (ownership moved)."""

        async def close() -> None:
            event = self._adopted.get(session_id)
            if event is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), self.server.config.upgrade.ready_timeout)
            # no stream close (that would end the session, XEP-0198 §5): the client sees a lost connection
            getattr(transport, "abandon", transport.close)()

        self.server.spawn(close())

    async def _close(self, session: ClientSession) -> None:
        """Not resumable: `<system-shutdown/>`; what it never acknowledged goes offline (XEP-0198 §4), and so
        does, without XEP-0198, what it did not prove it read (a ping unanswered within `[upgrade]
        proof_timeout`, nitro/c2s/read_proof.py). Out of the registry first: what arrives for it while its
        stream closes is stored, not written to a socket about to close."""
        self.server.sessions.remove(session)
        with contextlib.suppress(Exception):
            await session.close(StreamError("system-shutdown", "the server is being upgraded; reconnect"))
        self.progress.closed += 1

    async def _read(self, channel: Channel) -> None:
        while True:
            message, _fds = await channel.receive()
            if message["type"] == "adopted":
                for session_id in message["ids"]:
                    self._adopted_one(session_id)
                for session_id in message["refused"]:
                    await self._refused(session_id)
            elif message["type"] == "want":
                self._wanted.put_nowait(message["previd"])
            elif message["type"] == "deliver":  # for a session still here
                try:
                    await deliver_forwarded(self.server, message["to"], message["stanza"])
                except Exception:  # one stanza's routing error (e.g. storage down) never stops the drain
                    log.exception("upgrade: a stanza from the successor was not delivered")
            else:
                raise HandoverError(f"unexpected {message['type']} from the successor")

    def _adopted_one(self, session_id: str) -> None:
        moved = self._moved.get(session_id)
        if moved is None:
            return
        self.progress.moved += 1
        event = self._adopted.get(session_id)
        if event is not None:
            event.set()

    async def _refused(self, session_id: str) -> None:
        moved = self._moved.pop(session_id, None)
        if moved is None:
            return
        session = moved[0]
        session.log.warning("the successor refused the session; it ends here")
        event = self._adopted.pop(session_id, None)
        if event is not None:
            event.set()
        session.take_back()
        self.server.track(session)
        await self._close(session)

    async def _wait_adopted(self, reader: asyncio.Task[None], timeout: float) -> None:
        """Until the successor confirmed every session handed to it (or the reader ended: it went away)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while any(not event.is_set() for event in self._adopted.values()) and loop.time() < end:
            if reader.done():
                reader.result()
                raise HandoverError("the successor closed the upgrade socket")
            await asyncio.sleep(0.05)

    async def _close_negotiations(self) -> None:
        """Connections still negotiating here: told to reconnect (to the successor)."""
        for stream in list(self.server.connections):
            if not isinstance(stream, ClientSession):
                with contextlib.suppress(Exception):
                    await stream.close(
                        StreamError("system-shutdown", "the server is being upgraded; reconnect")
                    )

    async def _take_over_again(self, spare: dict[str, list[socket.socket]]) -> None:
        """The successor died after it was ready: accept again on the duplicates, and the sessions it had not
        confirmed (or had) come back here as detached (their clients resume here)."""
        await self._kill_successor()
        if self._channel is not None:
            self._channel.close()
        if self.server.cluster is not None:
            self.server.cluster.take_back()
        await self.listeners.serve_again(spare)
        if (path := pid_path(self.server.config)) is not None:
            write_pid_file(path)  # the serving process again
        for session_id, (session, data, kept) in list(self._moved.items()):
            self.server.sessions.remove(session)
            session.forward = None
            if isinstance(data.get("bosh"), dict):  # the successor may have answered requests we never saw
                data["bosh"] = {**data["bosh"], "rids_unknown": True}
            try:
                restored = await adopt(self.server, data)
            except Exception:
                log.exception("session %s could not be taken back", session_id)
                continue
            for stanza in kept:
                restored.send(stanza)
        self._moved.clear()
        self._adopted.clear()
