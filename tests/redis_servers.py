"""The ring tests' fixture: three real redis-servers (see integration/redis_servers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.redis_servers import REDIS_SERVER, RedisServer, start_servers

__all__ = ["RedisServer", "redis_servers"]


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """Three real redis-servers (no persistence), stopped by pid at the end."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    servers = start_servers(tmp_path, 3)
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()
