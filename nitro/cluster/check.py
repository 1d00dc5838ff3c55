"""`nitro check` for [cluster]: NATS answers with the configured credentials, and whether the node name is
already live in the ring (expected while this node runs; a second node with that name would refuse)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from nitro.cluster.identity import live_members
from nitro.cluster.link import ClusterError, NatsLink
from nitro.config_sections import Config
from nitro.ops.findings import Finding, error, ok
from nitro.storage.errors import StorageError
from nitro.storage.ring.ring import Ring


async def check_cluster(config: Config) -> AsyncIterator[Finding]:
    cluster = config.cluster
    if not cluster.node:
        yield ok("cluster: not a cluster member ([cluster] node is empty)")
        return
    link = NatsLink(cluster, config.base_dir)
    try:
        await link.connect()
        yield ok(f"cluster: NATS at {', '.join(cluster.nats)} accepts this node's credentials")
    except ClusterError as exc:
        yield error(f"cluster: {exc}")
    finally:
        await link.close()
    ring = Ring(config.redis)
    try:
        await ring.start()
        members = await live_members(ring)
    except StorageError as exc:
        yield error(f"cluster: the ring cannot list the live nodes: {exc}")
        return
    finally:
        await ring.close()
    names = ", ".join(f"{name} ({m.get('sessions', 0)} sessions)" for name, m in members.items()) or "none"
    yield ok(f"cluster: live nodes {names}")
    if cluster.node in members:
        yield ok(f"cluster: node name {cluster.node!r} is live (this node, if it runs; another would refuse)")
