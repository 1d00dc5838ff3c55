"""Worker 0 of a node with `[server] workers` > 1 supervises workers 1 … N-1 by pid, not as its children:
after an upgrade a worker is no child of worker 0 (its successor was started by the old worker, and once
worker 0 itself is replaced none of them is a child of the new worker 0). Each worker's pid is watched
with a pidfd (readable when that process exits, child or not). When one exits, the worker's admin socket
(handed to the successor in an upgrade, like every listener) says who serves as that worker now: a live
successor is watched in its place; when nobody answers, the worker is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from nitro.cluster.node import INHERITED_BOOT
from nitro.cluster.workers import worker_config
from nitro.config import Config
from nitro.ops.channel import ChannelError, call, socket_path
from nitro.ops.upgrade_progress import GENERATION, HANDOVER_FD

log = logging.getLogger(__name__)

RESTART_DELAY = (
    1.0  # seconds before a worker that exited is started again (one that cannot start never spins)
)
STOP_WAIT = 20.0  # seconds the workers have to shut down gracefully before SIGKILL
ASK_TIMEOUT = 5.0  # seconds more than [upgrade] ready_timeout a worker's admin socket has to answer
POLL = 0.1
# what a worker started by the supervisor must not inherit: systemd hears of worker 0 only (MAINPID), and
# a fresh worker is generation 1, no successor, and no continuation of anybody's cluster run
NOT_INHERITED = ("NOTIFY_SOCKET", GENERATION, HANDOVER_FD, INHERITED_BOOT)


@dataclass
class Worker:
    index: int
    pid: int | None = None
    restarts: int = 0
    replacing: bool = False  # a rolling upgrade replaces it now: its exit is no crash
    since: float = field(default_factory=time.time)


class WorkerSupervisor:
    """Workers 1 … count-1 of the node whose config is `base`: started (or adopted), watched, restarted."""

    def __init__(self, base: Config, count: int) -> None:
        assert base.file is not None, "workers need a config file to start from"
        self.base = base
        self.count = count
        self.workers = {index: Worker(index) for index in range(1, count)}
        self.paused = False  # worker 0 is being replaced: its successor decides about exits from now on
        self._done = False  # stopped, or released to worker 0's successor
        self._watched: dict[int, tuple[int, int]] = {}  # pid → (worker index, pidfd)
        self._exited: dict[int, asyncio.Event] = {}
        self._children: list[asyncio.subprocess.Process] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, *, adopt: bool) -> None:
        """Start every worker; `adopt` (worker 0 is an upgrade's successor): first ask each worker's admin
        socket for its pid, and start only those that do not answer."""
        for index in self.workers:
            pid = await self._ask(index, ASK_TIMEOUT) if adopt else None
            if pid is not None and self._watch(index, pid):
                log.info("worker %d (pid %d) supervised by this process", index, pid)
            else:
                await self._spawn(index)

    def snapshot(self) -> list[dict[str, Any]]:
        """For `nitro status`: every worker's pid (worker 0 is this process)."""
        rows: list[dict[str, Any]] = [{"worker": 0, "pid": os.getpid(), "restarts": 0}]
        rows += [
            {"worker": w.index, "pid": w.pid, "restarts": w.restarts, "replacing": w.replacing}
            for w in self.workers.values()
        ]
        return rows

    @contextlib.contextmanager
    def replacing(self, index: int) -> Iterator[None]:
        """While an upgrade replaces worker `index`: the exit of its old process waits for the outcome."""
        self.workers[index].replacing = True
        try:
            yield
        finally:
            self.workers[index].replacing = False

    def replaced(self, index: int, pid: int) -> None:
        """Worker `index` is process `pid` now (an upgrade's successor): watched instead of the old one."""
        if self.workers[index].pid != pid:
            self._watch(index, pid)

    def release(self) -> None:
        """Worker 0 was replaced: its successor supervises the workers now; they go on running."""
        self._done = True
        for pid in list(self._watched):
            self._unwatch(pid)

    async def stop(self) -> None:
        """SIGTERM to every worker (by pidfd: never another process that got the pid), SIGKILL after
        STOP_WAIT. Nothing after `release`."""
        if self._done:
            return
        self._done = True
        for task in self._tasks:
            task.cancel()
        self._signal_all(signal.SIGTERM)
        if not await self._all_exited(STOP_WAIT):
            self._signal_all(signal.SIGKILL)
            await self._all_exited(5.0)
        for pid in list(self._watched):
            self._unwatch(pid)
        for child in self._children:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.wait(), 5.0)

    # -- watching -----------------------------------------------------------------------------------------

    def _watch(self, index: int, pid: int) -> bool:
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, PermissionError):
            return False
        self.workers[index].pid = pid
        self.workers[index].since = time.time()
        self._watched[pid] = (index, fd)
        self._exited[pid] = asyncio.Event()
        asyncio.get_running_loop().add_reader(fd, self._exit, pid)
        return True

    def _unwatch(self, pid: int) -> None:
        watched = self._watched.pop(pid, None)
        if watched is not None:
            asyncio.get_running_loop().remove_reader(watched[1])
            os.close(watched[1])

    def _exit(self, pid: int) -> None:
        index, _fd = self._watched[pid]
        self._unwatch(pid)
        self._exited.pop(pid, asyncio.Event()).set()
        self._ended(index, pid)

    def _ended(self, index: int, pid: int) -> None:
        self._children = [child for child in self._children if child.returncode is None]
        if self._done or self.workers[index].pid != pid:
            return  # stopping, or an old process replaced by an upgrade
        task = asyncio.get_running_loop().create_task(self._after_exit(index, pid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _after_exit(self, index: int, dead: int) -> None:
        worker = self.workers[index]
        while (worker.replacing or self.paused) and not self._done:  # noqa: ASYNC110
            await asyncio.sleep(POLL)  # the upgrade's outcome decides (see `replaced`)
        if self._done or worker.pid != dead:
            return
        successor = await self._ask(index, self.base.upgrade.ready_timeout + ASK_TIMEOUT)
        if self._done or worker.pid != dead:
            return
        if successor is not None and successor != dead and self._watch(index, successor):
            log.info("worker %d is process %d now (was %d)", index, successor, dead)
            return
        log.warning("worker %d (pid %d) exited; starting it again in %.0f s", index, dead, RESTART_DELAY)
        await asyncio.sleep(RESTART_DELAY)
        if self._done or worker.pid != dead:
            return
        worker.restarts += 1
        await self._spawn(index)

    async def _ask(self, index: int, timeout: float) -> int | None:
        """The pid that answers on worker `index`'s admin socket, None when nobody does."""
        config = worker_config(self.base, index)
        if socket_path(config) is None:
            return None
        try:
            result = await call(config, "status", answer_timeout=timeout)
        except ChannelError:
            return None
        pid = result.get("pid")
        return pid if isinstance(pid, int) and pid > 0 else None

    async def _spawn(self, index: int) -> None:
        env = {name: value for name, value in os.environ.items() if name not in NOT_INHERITED}
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nitro",
            "--config",
            str(self.base.file),
            "serve",
            "--worker",
            str(index),
            env=env,
        )
        self._children.append(child)
        if not self._watch(index, child.pid):  # gone already: handled like any exit
            self.workers[index].pid = child.pid
            asyncio.get_running_loop().call_soon(self._ended, index, child.pid)
        log.info("worker %d started (pid %d)", index, child.pid)

    def _signal_all(self, signum: int) -> None:
        for _index, fd in self._watched.values():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signum)

    async def _all_exited(self, timeout: float) -> bool:
        events = [self._exited[pid] for pid in self._watched if pid in self._exited]
        try:
            async with asyncio.timeout(timeout):
                for event in events:
                    await event.wait()
        except TimeoutError:
            return False
        return True
