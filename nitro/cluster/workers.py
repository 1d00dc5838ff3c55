"""`[server] workers = N`: N processes of one node share its listening sockets (SO_REUSEPORT; the kernel
spreads new connections over them), each a cluster member "<node>-w<i>" that routes to the others over
NATS like any node. `nitro serve` runs worker 0 itself and supervises the others as child processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nitro.config_sections import Config

log = logging.getLogger(__name__)


def worker_count(config: Config) -> int:
    workers = config.server.workers
    if workers == "auto":
        return max(
            1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        )
    return int(workers)


def shares_ports(config: Config) -> bool:
    """Listeners are opened with SO_REUSEPORT: several workers bind the same ports."""
    return config.server.workers != 1


def worker_config(config: Config, index: int) -> Config:
    """Worker `index`'s view of `config`: its own member name, admin socket, pid file and metrics port."""
    admin = config.admin
    admin = dataclasses.replace(
        admin,
        socket=f"{admin.socket}.w{index}" if admin.socket and index else admin.socket,
        pid_file=admin.pid_file if index == 0 else "",
    )
    metrics = config.metrics
    if metrics.port and index:
        metrics = dataclasses.replace(metrics, port=metrics.port + index)
    cluster = dataclasses.replace(config.cluster, node=f"{config.cluster.node}-w{index}")
    return dataclasses.replace(config, admin=admin, metrics=metrics, cluster=cluster)


@asynccontextmanager
async def other_workers(config: Config, count: int) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Workers 1 … count-1 as child processes (`nitro serve --worker I`), stopped with SIGTERM on exit."""
    assert config.file is not None, "workers need a config file to start from"
    children: list[asyncio.subprocess.Process] = []
    try:
        for index in range(1, count):
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nitro", "--config", str(config.file), "serve", "--worker", str(index)
            )
            children.append(child)
            log.info("worker %d started (pid %d)", index, child.pid)
        yield children
    finally:
        for child in children:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                await asyncio.wait_for(child.wait(), 20)
            except TimeoutError:
                child.kill()
                await child.wait()
