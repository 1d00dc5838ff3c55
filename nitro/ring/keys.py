"""Redis key names: `nitro:1:<kind>.v<N>:<owner>[:<item>]`, namespaced and versioned per kind.

A kind's version is part of every key, so a Nitro that changes a value's shape bumps it and never reads
the old shape; the namespace lets an instance be cleaned of our keys only (see `Instance.flush`).
"""

from __future__ import annotations

NAMESPACE = "nitro:1:"
EPOCH = f"{NAMESPACE}epoch"  # per instance: "<run_id>/<random>", set when the instance is admitted
INVALIDATIONS = f"{NAMESPACE}invalidate"  # the pub/sub channel of cache invalidations
PATTERN = f"{NAMESPACE}*"  # every key of ours (SCAN MATCH)


def key(kind: str, version: int, owner: str, item: str | None = None) -> str:
    """The key of one value; `owner` is a JID localpart or bare JID, which contains no ':' in its
    local part (RFC 7622 §3.3.1), so kind, owner and item never run into each other."""
    base = f"{NAMESPACE}{kind}.v{version}:{owner}"
    return base if item is None else f"{base}:{item}"


def generation(kind: str, owner: str) -> str:
    """The generation of one owner's values of one kind: a random token replaced by every write."""
    return key("gen", 1, owner, kind)


def node(node_id: str) -> str:
    """A node's heartbeat key (its TTL says the node is alive)."""
    return key("node", 1, node_id)


def sessions(bare: str) -> str:
    """The session directory entry of a bare JID: a hash resource → record."""
    return key("sessions", 1, bare)
