"""A real `nitro serve` process for the upgrade tests: a config file, accounts, its log file, the generations
that follow it (read from the PID file), raw XMPP streams to it; every process started is stopped by pid."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import DOMAIN, PASSWORD, free_port

from integration.bots import Bot
from nitro.accounts import create_account
from nitro.config import Config, load_config
from nitro.ops.channel import pid_path
from nitro.ops.pidfile import read_pid
from nitro.storage.layered import open_storage

HEADER = (
    f"<?xml version='1.0'?><stream:stream to='{DOMAIN}' version='1.0' xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams'>"
).encode()
ENABLED = re.compile(rb'<enabled xmlns="urn:xmpp:sm:3" id="([^"]+)"')


def write_config(directory: Path, extra: str = "", *, http: bool = False, server: str = "") -> Path:
    """Plain c2s allowed (the raw streams of these tests use PLAIN over Direct TLS or TCP), no HTTP; `server`:
    more lines of [server] (e.g. workers)."""
    path = directory / "nitro.toml"
    path.write_text(
        f"""
[server]
domain = "{DOMAIN}"
{server}
[storage]
dsn = "sqlite+aiosqlite:///{directory}/nitro.db"
[c2s]
port = {free_port()}
direct_tls_port = {free_port()}
negotiation_timeout = 20.0
[tls]
cert = "{directory}/tls/cert.pem"
key = "{directory}/tls/key.pem"
[metrics]
port = 0
[http]
{f"port = {free_port()}" if http else "enabled = false"}
tls_port = 0
[auth]
scram_iterations = 4096
[limits]
bytes_per_second = 0
stanzas_per_second = 0
[admin]
socket = "run/admin.sock"
pid_file = "run/nitro.pid"
{extra}
"""
    )
    return path


@dataclass
class Node:
    """One Nitro node across its generations."""

    file: Path
    config: Config
    log: Path
    first: asyncio.subprocess.Process | None = None
    pids: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int | None:
        """Who the PID file names (the serving generation)."""
        path = pid_path(self.config)
        return None if path is None else read_pid(path)

    async def add_users(self, *names: str) -> None:
        async with open_storage(self.config) as storage:
            for name in names:
                await create_account(storage, name, PASSWORD, iterations=4096)

    async def start(self, env: dict[str, str] | None = None) -> None:
        with self.log.open("ab") as log:
            self.first = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "nitro",
                "--config",
                str(self.file),
                "serve",
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        self.pids.add(self.first.pid)
        await self.wait_log("serving localhost")
        await self.wait_for_pid(lambda pid: pid == self.first_pid)

    @property
    def first_pid(self) -> int:
        assert self.first is not None
        return self.first.pid

    async def wait_log(self, text: str, count: int = 1, timeout: float = 30.0) -> str:
        end = asyncio.get_running_loop().time() + timeout
        while True:
            content = self.log.read_text(errors="replace")
            if content.count(text) >= count:
                return content
            if asyncio.get_running_loop().time() > end:
                raise AssertionError(f"{text!r} not logged ({count}x); log:\n{content[-3000:]}")
            await asyncio.sleep(0.05)

    async def wait_for_pid(self, good: object, timeout: float = 30.0) -> int:
        end = asyncio.get_running_loop().time() + timeout
        while True:
            pid = self.pid
            if pid is not None and callable(good) and good(pid):
                self.pids.add(pid)
                return pid
            if asyncio.get_running_loop().time() > end:
                raise AssertionError(f"the pid file names {pid}")
            await asyncio.sleep(0.05)

    async def nitro(self, *args: str, timeout: float = 120.0) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nitro",
            "--config",
            str(self.file),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    async def stop(self) -> None:
        """SIGTERM to every generation this test saw (by pid), SIGKILL to what is left after a while."""
        if (pid := self.pid) is not None:
            self.pids.add(pid)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        end = asyncio.get_running_loop().time() + 15
        while any(alive(pid) for pid in self.pids) and asyncio.get_running_loop().time() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # other processes' exits: nothing to await
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.first is not None:
            with contextlib.suppress(ProcessLookupError):
                await asyncio.wait_for(self.first.wait(), 5)

    # -- raw streams -------------------------------------------------------------------------------------

    async def open(self) -> Peer:
        context = ssl.create_default_context(cafile=str(self.config.path(self.config.tls.cert)))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.config.c2s.direct_tls_port, ssl=context, server_hostname=DOMAIN
        )
        peer = Peer(reader, writer)
        peer.send(HEADER)
        await peer.expect(b"</stream:features>")
        return peer

    async def authenticated(self, user: str) -> Peer:
        peer = await self.open()
        peer.send(plain(user))
        await peer.expect(b"<success")
        peer.send(HEADER)
        await peer.expect(b"</stream:features>")
        return peer

    async def bound(self, user: str, resource: str) -> Peer:
        peer = await self.authenticated(user)
        peer.send(
            f"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            f"<resource>{resource}</resource></bind></iq>".encode()
        )
        await peer.expect(b'id="b1"')
        return peer

    async def managed(self, user: str, resource: str, *, resume: bool = True) -> tuple[Peer, str]:
        peer = await self.bound(user, resource)
        peer.send(f"<enable xmlns='urn:xmpp:sm:3' resume='{'true' if resume else 'false'}'/>".encode())
        if not resume:
            await peer.expect(b"<enabled")
            return peer, ""
        return peer, (await peer.expect(ENABLED)).group(1).decode()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def plain(user: str) -> bytes:
    import base64

    token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    return f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode()


def message(to: str, text: str) -> bytes:
    return f"<message to='{to}' type='chat' id='m-{text}'><body>{text}</body></message>".encode()


def resume(previd: str, h: int) -> bytes:
    return f"<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='{h}'/>".encode()


def bodies(data: bytes) -> list[str]:
    return [match.decode() for match in re.findall(rb"<body>([^<]*)</body>", data)]


class Peer:
    """A raw stream read as a transcript."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def expect(self, pattern: bytes | re.Pattern[bytes], timeout: float = 10.0) -> re.Match[bytes]:
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        end = asyncio.get_running_loop().time() + timeout
        while (match := regex.search(self.buffer)) is None:
            remaining = end - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"{regex.pattern!r} not received; got {self.buffer[-800:]!r}")
            chunk = await asyncio.wait_for(self.reader.read(65536), remaining)
            if not chunk:
                raise AssertionError(f"stream ended before {regex.pattern!r}; got {self.buffer[-800:]!r}")
            self.buffer += chunk
        self.buffer = self.buffer[match.end() :]
        return match

    async def until_closed(self, timeout: float = 15.0) -> bytes:
        """Everything until the server closes the connection."""
        end = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = end - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"the connection stayed open; got {self.buffer[-800:]!r}")
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), remaining)
            except (ConnectionError, ssl.SSLError):
                chunk = b""
            if not chunk:
                data, self.buffer = self.buffer, b""
                return data
            self.buffer += chunk

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def upgrade_section(**values: object) -> str:
    lines = ["[upgrade]"]
    for key, value in values.items():
        lines.append(f"{key} = {value!r}")
    return "\n".join(lines).replace("'", '"') + "\n"


def node(directory: Path, extra: str = "", *, http: bool = False, server: str = "") -> Node:
    file = write_config(directory, extra, http=http, server=server)
    return Node(file, load_config(file), directory / "nitro.log")


class Reconnecting:
    """Alice's client: stream management with resumption; reconnects when its connection is lost."""

    def __init__(self, bot: Bot, port: int) -> None:
        self.bot = bot
        self.stopping = False
        self.starts = 1
        self.resumed = 0
        bot.add_event_handler("disconnected", self._lost)
        bot.add_event_handler("session_start", self._started)
        bot.add_event_handler("session_resumed", self._resumed)
        self.port = port

    def _lost(self, _event: Any) -> None:
        if not self.stopping:
            asyncio.get_running_loop().call_later(0.2, self._again)

    def _again(self) -> None:
        if not self.stopping:
            self.bot.connect("127.0.0.1", self.port)

    def _started(self, _event: Any) -> None:
        self.starts += 1

    def _resumed(self, _event: Any) -> None:
        self.resumed += 1

    @property
    def connected(self) -> bool:
        return self.bot.transport is not None and bool(self.bot.authenticated)
