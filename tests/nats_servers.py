"""The cluster tests' fixture: a real nats-server of the test's own (see integration/nats_servers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.nats_servers import NATS_SERVER, NatsServer, start_nats

__all__ = ["NatsServer", "nats_server"]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server on a free port with a user and password, stopped by pid at the end."""
    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed")
    server = start_nats(tmp_path / "nats", user="nitro", password="cluster secret")
    try:
        yield server
    finally:
        server.stop()
