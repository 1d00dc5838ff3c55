"""Redis key names: `<prefix>:1:<kind>.v<N>:<owner>[:<item>]`, namespaced and versioned per kind.

A kind's version is part of every key, so a Nitro that changes a value's shape bumps it and never reads
the old shape; the namespace (`[redis].prefix`, "nitro" by default) keeps clusters sharing a Redis apart
and lets an instance be cleaned of one cluster's keys only (see `Instance.flush`).
"""

from __future__ import annotations

import re

LAYOUT = 1  # the version of this key layout itself
PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class KeySpace:
    """The key names of one cluster."""

    def __init__(self, prefix: str = "nitro") -> None:
        if not PREFIX.fullmatch(prefix):
            raise ValueError(f"a key prefix is 1 to 64 of A-Z a-z 0-9 _ . -, not {prefix!r}")
        self.namespace = f"{prefix}:{LAYOUT}:"
        self.epoch = f"{self.namespace}epoch"  # per instance: "<run_id>/<random>", set at admission
        self.invalidations = f"{self.namespace}invalidate"  # the pub/sub channel of cache invalidations
        self.pattern = f"{self.namespace}*"  # every key of ours (SCAN MATCH)

    def key(self, kind: str, version: int, owner: str, item: str | None = None) -> str:
        """The key of one value; `owner` is a JID localpart or bare JID, whose local part contains no ':'
        (RFC 7622 §3.3.1), so kind, owner and item never run into each other."""
        base = f"{self.namespace}{kind}.v{version}:{owner}"
        return base if item is None else f"{base}:{item}"

    def generation(self, kind: str, owner: str) -> str:
        """The generation of one owner's values of one kind: a random token replaced by every write."""
        return self.key("gen", 1, owner, kind)

    def node(self, node_id: str) -> str:
        """A node's heartbeat key (its TTL says the node is alive)."""
        return self.key("node", 1, node_id)

    def sessions(self, bare: str) -> str:
        """The session directory entry of a bare JID: a hash resource → record."""
        return self.key("sessions", 1, bare)
