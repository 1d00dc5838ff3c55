"""`nitro serve` around the server's scope: as a successor (inherited listeners, a self-check before ready,
the sessions of the old process adopted), the PID file and systemd's READY once serving, and the upgrade
this process can start in turn (`nitro upgrade` through the admin channel, SIGUSR2): on worker 0 of a node
with several workers, the rolling upgrade of them all (nitro/ops/rolling.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from nitro.config import Config
from nitro.ops import sdnotify
from nitro.ops.channel import pid_path
from nitro.ops.handover import HandoverError
from nitro.ops.pidfile import write_pid_file
from nitro.ops.rolling import RollingUpgrade
from nitro.ops.successor import NotReady, Predecessor
from nitro.ops.supervise import WorkerSupervisor
from nitro.ops.upgrade import Upgrader
from nitro.ops.upgrade_progress import Outcome, generation
from nitro.transports.listeners import Listeners

if TYPE_CHECKING:
    from nitro.server import Server

log = logging.getLogger(__name__)

EXIT_DELAY = 0.2  # seconds between a finished upgrade and the old process's shutdown: its answer goes out


class SuccessorFailed(Exception):
    """This process was started as a successor and cannot serve (it told the old process why)."""


@asynccontextmanager
async def serving(
    config: Config, stop: Callable[[], None], *, worker: int = 0, supervisor: WorkerSupervisor | None = None
) -> AsyncIterator[Server]:
    """The running server, ready; `stop` ends it (after an upgrade, too). `worker`: which of the node's
    workers this process is; `supervisor` (worker 0 of several): an upgrade replaces them all."""
    from nitro.server import running_server  # imported late: keeps `nitro user` light

    try:
        predecessor = await Predecessor.connect()
    except HandoverError as exc:
        log.error("started as a successor but the upgrade socket is unusable: %s", exc)
        raise SuccessorFailed(str(exc)) from exc
    listening = Listeners(predecessor.inherited if predecessor is not None else None)

    async def check(server: Server) -> None:
        if predecessor is None:
            return
        try:
            await predecessor.check(server)
        except NotReady as exc:
            log.error("upgrade: not ready, refusing to serve: %s", exc)
            await predecessor.failed(str(exc))
            raise SuccessorFailed(str(exc)) from exc

    try:
        async with running_server(config, listening, before_listen=check) as server:
            if predecessor is not None:
                await predecessor.ready()
                server.spawn(predecessor.serve(server))
            pid_file = pid_path(config)
            if pid_file is not None:
                write_pid_file(pid_file)
            sdnotify.notify("READY=1", f"MAINPID={os.getpid()}", f"STATUS=generation {generation()}")
            loop = asyncio.get_running_loop()

            def exit_soon() -> None:
                loop.call_later(EXIT_DELAY, stop)

            def taking_over() -> bool:  # this process's own upgrade is not over until its drain is
                return predecessor is not None and not (predecessor.done or predecessor.gone)

            upgrader = Upgrader(server, server.listening, exit_soon, taking_over, worker)
            rolling = None if supervisor is None else RollingUpgrade(supervisor.base, supervisor, upgrader)
            _expose(server, upgrader, predecessor, rolling)
            loop.add_signal_handler(
                signal.SIGUSR2, upgrader.on_signal if rolling is None else rolling.on_signal
            )
            try:
                yield server
            finally:
                loop.remove_signal_handler(signal.SIGUSR2)
                if predecessor is not None:
                    predecessor.close()
    except HandoverError as exc:
        if predecessor is not None:
            await predecessor.failed(str(exc))
        raise SuccessorFailed(str(exc)) from exc
    except BaseException as exc:
        if predecessor is not None and not isinstance(exc, SuccessorFailed | asyncio.CancelledError):
            await predecessor.failed(f"{type(exc).__name__}: {exc}")
        raise


def _expose(
    server: Server, upgrader: Upgrader, predecessor: Predecessor | None, rolling: RollingUpgrade | None
) -> None:
    """`nitro upgrade` and the upgrade's part of `nitro status` on the admin channel."""
    channel = server.admin
    if channel is None:
        return

    async def upgrade(_request: dict[str, Any]) -> dict[str, Any]:
        if rolling is not None:  # worker 0 of several: every worker, one at a time
            return await rolling.run()
        outcome = await upgrader.run()
        progress = upgrader.progress
        if outcome is Outcome.UNDER_WAY:
            return {"outcome": outcome.value, "reason": "an upgrade is already under way (or still draining)"}
        return {
            "outcome": outcome.value,
            "reason": progress.reason,
            "successor": progress.successor,
            "moved": progress.moved,
            "closed": progress.closed,
        }

    channel.commands["upgrade"] = upgrade
    channel.status_parts["generation"] = generation
    channel.status_parts["upgrade"] = upgrader.progress_dict
    if predecessor is not None:
        channel.status_parts["predecessor"] = predecessor.status
    if rolling is not None:
        channel.status_parts["workers"] = rolling.supervisor.snapshot
        channel.status_parts["rolling"] = lambda: dict(rolling.progress)
