"""`[server] workers = N`: N processes of one node share its listening sockets (SO_REUSEPORT; the kernel
spreads new connections over them), each a cluster member "<node>-w<i>" that routes to the others over
NATS like any node. `nitro serve` runs worker 0 itself and supervises the others (nitro/ops/supervise.py);
`nitro upgrade` replaces them one at a time (nitro/ops/rolling.py).
"""

from __future__ import annotations

import dataclasses
import os

from nitro.config_sections import Config


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
