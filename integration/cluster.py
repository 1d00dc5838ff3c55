"""A local Nitro cluster for tests, benchmarks and operators: N `nitro serve` processes on free loopback
ports, a ring of M redis-servers, a nats-server of its own and a fresh database (a new MariaDB database on
the local server, or a SQLite file), all in one folder and all stopped by pid.

    with LocalCluster(Path("var/integration"), nodes=3, redis=3) as cluster:   # or .start() / .stop()
        cluster.nodes[0].c2s_port
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from integration.nats_servers import NatsServer, start_nats
from integration.redis_servers import RedisServer, free_port, start_servers

DOMAIN = "localhost"
MARIADB = "mysql+asyncmy://root@127.0.0.1:3306"


@dataclass
class NodeProcess:
    """One `nitro serve` process of the cluster."""

    name: str
    directory: Path
    c2s_port: int
    tls_port: int
    metrics_port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    pid: int | None = None

    @property
    def config(self) -> Path:
        return self.directory / "nitro.toml"

    @property
    def log(self) -> Path:
        return self.directory / "nitro.log"

    def start(self, env: dict[str, str] | None = None) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nitro", "--config", str(self.config), "serve"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # `up` returns; the nodes keep running until `down`
            )
        self.pid = self.process.pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"node {self.name} exited with {self.process.returncode}:\n{tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.c2s_port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"node {self.name} did not listen on {self.c2s_port} within {timeout}s")

    def alive(self) -> bool:
        if self.pid is None:
            return False
        if self.process is not None:
            return self.process.poll() is None
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL: a crash, nothing cleaned up."""
        self._signal(signal.SIGKILL)
        self._wait(10)

    def stop(self) -> None:
        """SIGTERM (clients get <system-shutdown/>), SIGKILL after 15 s."""
        self._signal(signal.SIGTERM)
        if not self._wait(15):
            self.kill()

    def _signal(self, signum: signal.Signals) -> None:
        if self.pid is not None and self.alive():
            os.kill(self.pid, signum)

    def _wait(self, seconds: float) -> bool:
        if self.process is not None:
            try:
                self.process.wait(seconds)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + seconds
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.alive()


@dataclass
class LocalCluster:
    """Everything a cluster needs on this machine, in `directory`."""

    directory: Path
    nodes_count: int = 3
    redis_count: int = 3
    database: str = "mariadb"  # "mariadb": a fresh database on the local server; "sqlite": a file
    heartbeat_ttl: float = 6.0
    cluster_name: str = "local"
    extra: str = ""  # more TOML appended to every node's config
    workers: int = 1  # [server] workers of each node
    nodes: list[NodeProcess] = field(default_factory=list)
    redis: list[RedisServer] = field(default_factory=list)
    nats: NatsServer | None = None
    dsn: str = ""

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- up ----------------------------------------------------------------------------------------

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self.redis = start_servers(self._fresh("redis"), self.redis_count)
            self.nats = start_nats(self.directory / "nats", user="nitro", password=secrets.token_hex(8))
            self.dsn = self._database()
            for index in range(self.nodes_count):
                self.add_node(f"node{index + 1}", wait=index == 0)  # the first writes the TLS certificate
            for node in self.nodes:
                node.wait_ready()
        except BaseException:
            self.stop()
            raise

    def add_node(self, name: str, *, wait: bool = True) -> NodeProcess:
        """Start one more node (also how an operator adds one: same ring, database and NATS)."""
        folder = self.directory / name
        folder.mkdir(parents=True, exist_ok=True)
        node = NodeProcess(name, folder, free_port(), free_port(), free_port())
        node.config.write_text(self.node_config(node))
        if not self.nodes:
            self._upgrade(node)
        node.start()
        self.nodes.append(node)
        if wait:
            node.wait_ready()
        return node

    def node_config(self, node: NodeProcess) -> str:
        assert self.nats is not None
        instances = ", ".join(f'"{server.url}"' for server in self.redis)
        return f"""# {node.name} of the local cluster in {self.directory} (python -m integration up)
[server]
domain = "{DOMAIN}"
workers = {self.workers}
[storage]
dsn = "{self.dsn}"
[c2s]
port = {node.c2s_port}
direct_tls_port = {node.tls_port}
[http]
enabled = false
[tls]
cert = "{self.directory}/tls/cert.pem"
key = "{self.directory}/tls/key.pem"
[metrics]
port = {node.metrics_port if self.workers == 1 else 0}
[admin]
socket = "admin.sock"
pid_file = "nitro.pid"
[limits]
stanzas_per_second = 100000.0
bytes_per_second = 0
[redis]
instances = [{instances}]
prefix = "{self.cluster_name}"
health_interval = 0.5
health_timeout = 0.3
failures_before_out = 2
socket_timeout = 0.5
[cluster]
node = "{node.name}"
name = "{self.cluster_name}"
nats = ["{self.nats.url}"]
nats_user = "{self.nats.user}"
nats_password = "{self.nats.password}"
heartbeat_ttl = {self.heartbeat_ttl}
request_timeout = 1.0
{self.extra}
"""

    def _fresh(self, name: str) -> Path:
        folder = self.directory / name
        folder.mkdir(parents=True, exist_ok=True)
        for child in folder.iterdir():
            if child.is_dir():
                for inner in child.iterdir():
                    inner.unlink()
                child.rmdir()
        return folder

    def _database(self) -> str:
        if self.database == "sqlite":
            return f"sqlite+aiosqlite:///{self.directory}/nitro.db?timeout=10"
        return f"{MARIADB}/nitro_it_{secrets.token_hex(4)}"

    def _upgrade(self, node: NodeProcess) -> None:
        """`nitro db upgrade`: creates the database and its schema."""
        done = subprocess.run(
            [sys.executable, "-m", "nitro", "--config", str(node.config), "db", "upgrade"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"nitro db upgrade failed: {done.stderr.strip()}")

    # -- down --------------------------------------------------------------------------------------

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.nats is not None:
            self.nats.stop()
        for server in self.redis:
            server.stop()
        if self.dsn.startswith(MARIADB):
            drop_database(self.dsn)

    # -- as a state file (for `python -m integration down`) ----------------------------------------

    def state(self) -> dict[str, Any]:
        assert self.nats is not None
        return {
            "directory": str(self.directory),
            "dsn": self.dsn,
            "nodes": [
                {"name": n.name, "pid": n.pid, "c2s_port": n.c2s_port, "tls_port": n.tls_port,
                 "metrics_port": n.metrics_port, "config": str(n.config)}
                for n in self.nodes
            ],
            "redis": [{"port": s.port, "pid": s.process.pid if s.process else None} for s in self.redis],
            "nats": {"url": self.nats.url, "pid": self.nats.process.pid if self.nats.process else None},
        }  # fmt: skip


def drop_database(dsn: str) -> None:
    import pymysql

    name = dsn.rsplit("/", 1)[1]
    if not name.startswith("nitro_it_"):
        return  # only databases this harness created
    connection = pymysql.connect(host="127.0.0.1", port=3306, user="root")
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        connection.close()


def stop_pid(pid: int | None, seconds: float = 15.0) -> None:
    """Stop a process of a saved cluster by its pid: SIGTERM, then SIGKILL."""
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.05)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def save_state(path: Path, cluster: LocalCluster) -> None:
    path.write_text(json.dumps(cluster.state(), indent=2))
