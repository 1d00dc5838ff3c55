"""Cluster benchmark (not a test): message latency same-node vs cross-node (p50/p99) and cluster throughput
with 1, 2 and 3 nodes and with one node of 2 workers, over real sockets, with slixmpp clients in this
process (their cost is in every figure alike). No archive (its SQL write per message would measure the
database). On one machine every node, Redis, NATS and the clients share its cores.

    python -m integration.bench_cluster [--messages 300] [--pairs 6] [--burst 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from integration.bots import Bot, close, login_as
from integration.cluster import LocalCluster
from integration.populate import PASSWORD, populate, username

NO_ARCHIVE = '[modules]\ndisabled = ["mam"]\n'


class Stamped(Bot):
    """Records when each message arrives (bodies carry the send time)."""

    def __init__(self, jid: str, password: str) -> None:
        super().__init__(jid, password)
        self.latencies: list[float] = []
        self.add_event_handler("message", self._stamp)

    def _stamp(self, message: object) -> None:
        body = str(message["body"])  # type: ignore[index]
        if body.startswith("t="):
            self.latencies.append(time.perf_counter() - float(body[2:]))


async def _login(index: int, cluster: LocalCluster, node: int) -> Stamped:
    cert = cluster.directory / "tls" / "cert.pem"
    port = cluster.nodes[node].c2s_port
    return await login_as(Stamped, f"{username(index)}@localhost/b", PASSWORD, port, cert)


async def _until(condition: object, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("messages did not all arrive")
        await asyncio.sleep(0.005)


def _percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"


async def latency(cluster: LocalCluster, messages: int, receiver_node: int) -> str:
    sender = await _login(0, cluster, 0)
    receiver = await _login(1, cluster, receiver_node)
    try:
        await asyncio.sleep(0.5)  # every node has heard of both binds
        to = str(receiver.boundjid)
        for count in range(1, messages + 1):  # one at a time: latency, not queueing
            sender.say(to, f"t={time.perf_counter()}")
            await _until(lambda count=count: len(receiver.latencies) >= count, 10)
        return _percentiles(receiver.latencies)
    finally:
        await close(sender, receiver)


async def throughput(cluster: LocalCluster, pairs: int, burst: int) -> str:
    nodes = len(cluster.nodes)
    bots = []
    try:
        for index in range(2 * pairs):  # sender 2i on node i, its receiver 2i+1 on the next node
            bots.append(await _login(index, cluster, (index // 2 + index % 2) % nodes))
        await asyncio.sleep(0.5)
        start = time.perf_counter()
        for pair in range(pairs):
            sender, receiver = bots[2 * pair], bots[2 * pair + 1]
            for _ in range(burst):
                sender.say(str(receiver.boundjid), f"t={time.perf_counter()}")
        receivers = bots[1::2]
        await _until(lambda: all(len(r.latencies) >= burst for r in receivers))
        elapsed = time.perf_counter() - start
        every = [value for r in receivers for value in r.latencies]
        return f"{pairs * burst / elapsed:7.0f} msg/s  ({pairs * burst} messages, {_percentiles(every)})"
    finally:
        await close(*bots)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()
    for nodes, workers in ((1, 1), (2, 1), (3, 1), (1, 2)):
        with tempfile.TemporaryDirectory() as folder:
            cluster = LocalCluster(
                Path(folder), nodes, 3, database="sqlite", extra=NO_ARCHIVE, workers=workers
            )
            await asyncio.to_thread(cluster.start)
            try:
                await populate(cluster.dsn, 2 * args.pairs + 2, 0)
                await asyncio.sleep(2.0)  # every worker is up
                print(
                    f"{nodes} node(s)"
                    + (f", {workers} workers (connections spread by the kernel)" if workers > 1 else "")
                )
                print(f"  same-node latency   {await latency(cluster, args.messages, 0)}")
                if nodes > 1:
                    print(f"  cross-node latency  {await latency(cluster, args.messages, 1)}")
                print(f"  throughput          {await throughput(cluster, args.pairs, args.burst)}")
            finally:
                await asyncio.to_thread(cluster.stop)


if __name__ == "__main__":
    asyncio.run(main())
