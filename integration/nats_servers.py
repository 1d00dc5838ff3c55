"""A real `nats-server` process on a free loopback port, in a folder of its own, stopped by pid.

Used by the cluster tests (tests/nats_servers.py adds the pytest fixture) and by `python -m integration`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from integration.redis_servers import free_port

NATS_SERVER = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None
)


@dataclass
class NatsServer:
    """One nats-server; `stop`/`start` take it away and bring it back on the same port."""

    port: int
    directory: Path
    user: str = ""
    password: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert NATS_SERVER is not None
        args = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-l", str(self.directory / "nats.log")]
        if self.user:
            args += ["--user", self.user, "--pass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    if sock.recv(16).startswith(b"INFO"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server on port {self.port} did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_nats(directory: Path, *, user: str = "", password: str = "") -> NatsServer:
    directory.mkdir(parents=True, exist_ok=True)
    server = NatsServer(free_port(), directory, user, password)
    server.start()
    return server
