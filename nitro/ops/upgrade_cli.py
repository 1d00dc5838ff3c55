"""`nitro upgrade`: ask the running server to hand over to a successor and wait for the outcome (through the
admin channel; by SIGUSR2 to the PID file's process when there is no channel). With `[server] workers` > 1
worker 0 replaces every worker, one at a time (nitro/ops/rolling.py); the outcome covers them all."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

from nitro.cluster.workers import worker_count
from nitro.config import Config
from nitro.ops.channel import ChannelError, NotRunning, call, pid_path
from nitro.ops.pidfile import read_pid, running_pid

EXIT_DONE = 0
EXIT_FAILED = 1  # no server, or no answer
EXIT_UNDER_WAY = 3  # refused: an upgrade is already under way
EXIT_ROLLED_BACK = 4  # the successor failed; the running server goes on
EXIT_WORKERS = (
    5  # refused: [server] workers > 1 without an admin socket (nothing was done; the node serves on)
)
POLL = 0.2


async def upgrade_command(config: Config) -> int:
    settings = config.upgrade
    wait = (settings.ready_timeout + settings.drain_deadline + 60.0) * worker_count(
        config
    )  # one after another
    try:
        result = await call(config, "upgrade", answer_timeout=wait)
    except NotRunning as exc:
        return await _by_signal(config, wait, exc)
    except ChannelError as exc:
        print(f"nitro: upgrade: {exc}", file=sys.stderr)
        return EXIT_FAILED
    outcome = result.get("outcome")
    if outcome == "done" and "workers" in result:
        for row in result["workers"]:
            print(
                f"worker {row['worker']}: process {row['new']} serves (was {row['old']}); "
                f"{row['moved']} sessions moved, {row['closed']} closed"
            )
        print(f"upgraded: every worker of the node replaced; worker 0 is process {result.get('successor')}")
        return EXIT_DONE
    if outcome == "done":
        print(
            f"upgraded: successor {result.get('successor')} serves; {result.get('moved', 0)} sessions moved, "
            f"{result.get('closed', 0)} closed"
        )
        return EXIT_DONE
    if outcome == "refused-workers":
        print(f"nitro: upgrade refused: {result.get('reason')}", file=sys.stderr)
        return EXIT_WORKERS
    if outcome == "under-way":
        why = f" ({result['reason']})" if "worker" in str(result.get("reason")) else ""
        print(f"nitro: upgrade refused: an upgrade is already under way{why}", file=sys.stderr)
        return EXIT_UNDER_WAY
    if outcome == "failed":
        print(f"nitro: upgrade failed: {result.get('reason')}", file=sys.stderr)
        return EXIT_FAILED
    print(f"nitro: upgrade rolled back, the running server goes on: {result.get('reason')}", file=sys.stderr)
    return EXIT_ROLLED_BACK


async def _by_signal(config: Config, wait: float, why: NotRunning) -> int:
    """No admin channel: SIGUSR2 to the Nitro the PID file names, then wait for the file to name a new one
    and the old one to exit."""
    path = pid_path(config)
    old = running_pid(path) if path is not None else None
    if old is None:
        stale = f" (stale pid file {path})" if path is not None and read_pid(path) is not None else ""
        print(f"nitro: upgrade: {why}{stale}", file=sys.stderr)
        return EXIT_FAILED
    assert path is not None
    if worker_count(config) > 1:  # the server would refuse the signal too (nitro/ops/rolling.py, its log)
        print(
            "nitro: upgrade refused: [server] workers is more than 1 and there is no admin socket to ask the "
            "workers through",
            file=sys.stderr,
        )
        return EXIT_WORKERS
    os.kill(old, signal.SIGUSR2)
    end = time.monotonic() + wait
    while time.monotonic() < end:
        await asyncio.sleep(POLL)
        new = running_pid(path)
        if new is not None and new != old and not _alive(old):
            print(f"upgraded: process {new} serves (was {old})")
            return EXIT_DONE
        if new == old and not _alive(old):
            break
    print(f"nitro: upgrade by SIGUSR2 to {old} did not complete; see its log", file=sys.stderr)
    return EXIT_ROLLED_BACK


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
