"""Real `redis-server` processes for the ring tests: free loopback ports, own temp dirs, stopped by pid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import free_port

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


@dataclass
class RedisServer:
    """One redis-server process; `kill`/`start` simulate a crash and a restart on the same port."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--dbfilename", "dump.rdb",  # loaded at start only if `snapshot` wrote one
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is saved."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def snapshot(self) -> None:
        """Write dump.rdb now (SAVE), to restart later with this, by then stale, data."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"SAVE\r\n")
            assert sock.recv(64).startswith(b"+OK")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a SIGSTOPped server cannot act on SIGTERM
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_servers(tmp_path: Path, count: int) -> list[RedisServer]:
    servers = []
    for index in range(count):
        directory = tmp_path / f"redis{index}"
        directory.mkdir()
        server = RedisServer(free_port(), directory)
        server.start()
        servers.append(server)
    return servers


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
