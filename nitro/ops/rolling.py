"""`nitro upgrade` (or SIGUSR2, or `systemctl reload`) on a node with `[server] workers` > 1: worker 0
replaces every worker, one at a time, workers 1 … N-1 first and itself last. Each worker runs the
single-process upgrade for its own listeners and sessions (nitro/ops/upgrade.py: its own successor, its
sockets handed over, sessions moved, the name "<node>-w<i>" taken over), asked through its admin socket;
the others keep accepting meanwhile, so the node never stops taking connections. The first worker whose
successor fails ends the run: it goes on serving (rollback), those replaced before it stay replaced.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from nitro.cluster.workers import worker_config
from nitro.config import Config
from nitro.ops import sdnotify
from nitro.ops.channel import ChannelError, call, socket_path
from nitro.ops.supervise import WorkerSupervisor
from nitro.ops.upgrade import Upgrader
from nitro.ops.upgrade_progress import Outcome

log = logging.getLogger(__name__)

NO_SOCKET = (
    "[server] workers is more than 1 and [admin] socket is off: worker 0 asks each worker to upgrade, and "
    "learns its outcome, through the worker's admin socket; set [admin] socket (or restart the node)"
)
UPGRADING = ("spawning", "checking", "draining")


class RollingUpgrade:
    """Worker 0's upgrades of the whole node: at most one at a time."""

    def __init__(self, base: Config, supervisor: WorkerSupervisor, upgrader: Upgrader) -> None:
        self.base = base
        self.supervisor = supervisor
        self.upgrader = upgrader
        self.progress: dict[str, Any] = {"state": "idle", "worker": None, "replaced": []}
        self._lock = asyncio.Lock()

    @property
    def under_way(self) -> bool:
        return self._lock.locked() or self.upgrader.under_way

    def on_signal(self) -> None:
        """SIGUSR2 to worker 0: upgrade the node; the outcome goes to the log."""
        if self.under_way:
            log.warning("upgrade requested by SIGUSR2 refused: one is already under way")
            return
        self.upgrader.server.spawn(self._logged())

    async def _logged(self) -> None:
        answer = await self.run()
        log.info(
            "upgrade of every worker requested by SIGUSR2: %s %s",
            answer["outcome"],
            answer.get("reason") or "",
        )

    async def run(self) -> dict[str, Any]:
        """The answer `nitro upgrade` gets (see nitro/ops/upgrade_cli.py)."""
        if self.under_way:
            return {"outcome": Outcome.UNDER_WAY.value, "reason": "an upgrade is already under way"}
        if socket_path(self.base) is None:
            log.warning("upgrade refused: %s", NO_SOCKET)
            return {"outcome": Outcome.WORKERS.value, "reason": NO_SOCKET}
        async with self._lock:
            self.progress = {"state": "checking", "worker": None, "replaced": [], "started": time.time()}
            try:
                answer = await self._run()
            except Exception as exc:  # ours: the node serves on as it is now
                log.exception("upgrade of the workers failed")
                answer = {"outcome": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            self.progress["state"] = answer["outcome"]
            self.progress["reason"] = answer.get("reason")
            return answer

    async def _run(self) -> dict[str, Any]:
        busy = await self._busy()
        if busy is not None:
            return {"outcome": Outcome.UNDER_WAY.value, "reason": f"worker {busy} is still upgrading"}
        settings = self.base.upgrade
        wait = settings.ready_timeout + settings.drain_deadline + 60.0
        sdnotify.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        replaced: list[dict[str, Any]] = self.progress["replaced"]
        for index in sorted(self.supervisor.workers):
            self.progress.update(state="replacing", worker=index)
            old = self.supervisor.workers[index].pid
            log.info("upgrade: replacing worker %d (pid %s)", index, old)
            with self.supervisor.replacing(index):
                try:
                    result = await call(worker_config(self.base, index), "upgrade", answer_timeout=wait)
                except ChannelError as exc:
                    sdnotify.notify("READY=1")
                    return self._stopped("failed", index, f"no answer from worker {index}: {exc}", replaced)
                if result.get("outcome") != Outcome.DONE.value:
                    sdnotify.notify("READY=1")
                    outcome = result.get("outcome", "failed")
                    return self._stopped(outcome, index, str(result.get("reason")), replaced)
                self.supervisor.replaced(index, int(result["successor"]))
            replaced.append(_row(index, old, result))
            log.info("upgrade: worker %d replaced by %s", index, result["successor"])
        # worker 0 last: once it is done, its successor supervises the others (this process exits)
        self.progress.update(state="replacing", worker=0)
        old = os.getpid()
        self.supervisor.paused = True
        outcome = await self.upgrader.run()
        progress = self.upgrader.progress
        if outcome is not Outcome.DONE:
            self.supervisor.paused = False
            return self._stopped(outcome.value, 0, str(progress.reason), replaced)
        self.supervisor.release()
        replaced.append(
            {
                "worker": 0,
                "old": old,
                "new": progress.successor,
                "moved": progress.moved,
                "closed": progress.closed,
            }
        )
        return {
            "outcome": Outcome.DONE.value,
            "successor": progress.successor,
            "moved": sum(row["moved"] for row in replaced),
            "closed": sum(row["closed"] for row in replaced),
            "workers": replaced,
        }

    def _stopped(
        self, outcome: str, index: int, reason: str, replaced: list[dict[str, Any]]
    ) -> dict[str, Any]:
        done = ", ".join(str(row["worker"]) for row in replaced)
        kept = f"worker {done} stays replaced" if len(replaced) == 1 else f"workers {done} stay replaced"
        text = f"worker {index}: {reason}; it goes on serving; " + (
            f"{kept}; the others were not touched" if replaced else "no worker was replaced"
        )
        if outcome == Outcome.UNDER_WAY.value:
            text = f"worker {index}: an upgrade is already under way there; " + (
                f"{kept}" if replaced else "no worker was replaced"
            )
        log.error("upgrade of the workers stopped at %s", text)
        return {"outcome": outcome, "reason": text, "workers": replaced, "worker": index}

    async def _busy(self) -> int | None:
        """A worker that is upgrading or still taking over from its predecessor (then nothing starts)."""
        for index in sorted(self.supervisor.workers):
            try:
                status = await call(worker_config(self.base, index), "status", answer_timeout=10.0)
            except ChannelError:
                continue  # the upgrade call says what is wrong with it
            predecessor = status.get("predecessor") or {}
            if (status.get("upgrade") or {}).get("state") in UPGRADING or (
                predecessor and not predecessor.get("done") and not predecessor.get("gone")
            ):
                return index
        return None


def _row(index: int, old: int | None, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "worker": index,
        "old": old,
        "new": result.get("successor"),
        "moved": int(result.get("moved", 0)),
        "closed": int(result.get("closed", 0)),
    }
