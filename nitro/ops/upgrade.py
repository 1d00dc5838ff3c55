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

from nitro.c2s.session import ClientSession
from nitro.cluster.node import INHERITED_BOOT
from nitro.ops import sdnotify
from nitro.ops.adopt import deliver_forwarded
from nitro.ops.channel import pid_path
from nitro.ops.drain_closes import Closes
from nitro.ops.forwarding import offline_to, to_successor
from nitro.ops.handoffs import Handoffs
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
BATCHES_PER_SECOND = 10


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
        self.handoffs = Handoffs(server)
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
                closing, retry = await self.handoffs.move(channel, batch, self._journal, late=late)
                # out of the registry now: never drained twice, what arrives for them is stored
                for session in closing:
                    self.server.sessions.remove(session)
                closes.start(closing)
                pending.extend(retry)
                pending.extend(s for s in self._to_drain() if s not in pending)  # logged in meanwhile
                if pending or not self._wanted.empty():
                    await self._pause(interval)
            await closes.wait()
            self._journal.stop()  # every session moved or closed: nothing left to copy
            await self.handoffs.wait_adopted(reader, min(30.0, max(1.0, deadline - loop.time() + 5.0)))
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
                    if self.handoffs.adopted(session_id):
                        self.progress.moved += 1
                for session_id in message["refused"]:
                    if (session := self.handoffs.refused(session_id)) is not None:
                        await self._close(session)
            elif message["type"] == "want":
                self._wanted.put_nowait(message["previd"])
            elif message["type"] == "deliver":  # for a session still here
                try:
                    await deliver_forwarded(self.server, message["to"], message["stanza"])
                except Exception:  # one stanza's routing error (e.g. storage down) never stops the drain
                    log.exception("upgrade: a stanza from the successor was not delivered")
            else:
                raise HandoverError(f"unexpected {message['type']} from the successor")

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
        await self.handoffs.take_back_all()
