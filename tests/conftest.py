"""Fixtures: a real Nitro on free loopback ports, and real slixmpp clients that log in to it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import itertools
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import slixmpp
from slixmpp import Iq

from nitro.accounts import create_account
from nitro.config import Config, parse_config
from nitro.server import Server, running_server

pytest_plugins = ["sqlbackends"]  # sql_backend, mariadb_backend: storage tests on every backend

T = TypeVar("T")

DOMAIN = "localhost"
WEB_CLIENT_DIR = Path(__file__).resolve().parent.parent / "var" / "web" / "converse.js"  # `make web-client`
PASSWORD = "correct horse battery"

logging.getLogger("slixmpp").setLevel(logging.WARNING)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (held together while picked, so no two are the same)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


_prefixes = itertools.count()


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    """A config for one test: free ports, files under tmp_path, fast timers; override per section."""
    ports = free_ports(4)  # c2s STARTTLS and Direct TLS, HTTP and HTTPS
    document: dict[str, dict[str, Any]] = {
        "server": {"domain": DOMAIN, "admins": [f"admin@{DOMAIN}"]},
        "storage": {"dsn": f"sqlite+aiosqlite:///{tmp_path}/nitro.db"},
        "c2s": dict(zip(("port", "direct_tls_port"), ports[:2], strict=True), negotiation_timeout=20.0),
        "http": {"port": ports[2], "tls_port": ports[3], "web_client_dir": str(WEB_CLIENT_DIR)},
        "tls": {"cert": str(tmp_path / "tls" / "cert.pem"), "key": str(tmp_path / "tls" / "key.pem")},
        "auth": {"scram_iterations": 4096},
        "metrics": {"port": 0},
        # Archive tests file messages under fixed dates (2024): no retention sweep unless a test asks.
        "archive": {"retention_days": 0},
        # shaping stays on (stanzas at the default rate), but bytes fast enough for the tests that send
        # payloads of a few hundred kB to reach a size limit; tests/test_fair_service.py shapes input
        "limits": {"bytes_per_second": 1_000_000},
    }
    if ring := os.environ.get("NITRO_TEST_REDIS"):  # run the suite on a ring: space-separated redis URLs
        prefix = f"test{os.getpid()}-{next(_prefixes)}"  # each test its own cluster on the shared ring
        document["redis"] = {"instances": ring.split(), "health_interval": 0.2, "prefix": prefix}
    for name, values in sections.items():
        document.setdefault(name, {}).update(values)
    return parse_config(document, base_dir=tmp_path)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@contextlib.asynccontextmanager
async def started_server(config: Config, attempts: int = 5) -> AsyncIterator[Server]:
    """`running_server`, on fresh ports again if another process took a free port before we bound it."""
    for attempt in range(attempts):
        try:
            context = running_server(config)
            running = await context.__aenter__()
        except OSError as error:
            if error.errno != errno.EADDRINUSE or attempt == attempts - 1:
                raise
            ports = free_ports(4)
            c2s = dataclasses.replace(config.c2s, port=ports[0], direct_tls_port=ports[1])
            http = dataclasses.replace(config.http, port=ports[2], tls_port=ports[3])
            config = dataclasses.replace(config, c2s=c2s, http=http)
            continue
        try:
            yield running
        except BaseException as error:
            if not await context.__aexit__(type(error), error, error.__traceback__):
                raise
        else:
            await context.__aexit__(None, None, None)
        return


@pytest.fixture
async def server(config: Config) -> AsyncIterator[Server]:
    async with started_server(config) as running:
        yield running


@dataclasses.dataclass
class Clients:
    """Logs real slixmpp clients in to the test server and disconnects them at the end of the test."""

    server: Server
    connected: list[slixmpp.ClientXMPP] = dataclasses.field(default_factory=list)

    async def user(self, name: str, password: str = PASSWORD) -> str:
        """Create an account (as `nitro user add` does) and return its bare JID."""
        await create_account(self.server.storage, name, password)
        return f"{name}@{DOMAIN}"

    def make(
        self, jid: str, password: str = PASSWORD, plugins: Iterable[str] = (), *, direct_tls: bool = False
    ) -> slixmpp.ClientXMPP:
        client = slixmpp.ClientXMPP(jid, password)
        for plugin in ("xep_0030", "xep_0199", *plugins):
            client.register_plugin(plugin)
        client.ca_certs = self.server.config.path(self.server.config.tls.cert)
        client.enable_direct_tls = direct_tls
        client.enable_starttls = not direct_tls
        client.enable_plaintext = False
        self.connected.append(client)
        return client

    async def login(
        self,
        jid: str,
        password: str = PASSWORD,
        plugins: Iterable[str] = (),
        *,
        direct_tls: bool = False,
        setup: Callable[[slixmpp.ClientXMPP], None] | None = None,
        send_presence: bool = True,
    ) -> slixmpp.ClientXMPP:
        """Connect, authenticate, bind and (by default) send initial presence; wait for session_start."""
        client = self.make(jid, password, plugins, direct_tls=direct_tls)
        if setup is not None:
            setup(client)
        started = asyncio.get_running_loop().create_future()

        def on_start(_event: Any) -> None:
            if send_presence:
                client.send_presence()
            if not started.done():
                started.set_result(True)

        def on_failure(_event: Any) -> None:
            if not started.done():
                started.set_exception(AssertionError(f"{jid}: authentication failed"))

        client.add_event_handler("session_start", on_start)
        client.add_event_handler("failed_all_auth", on_failure)
        await self.connect(client)
        await asyncio.wait_for(started, 15)
        return client

    async def connect(self, client: slixmpp.ClientXMPP) -> None:
        c2s = self.server.config.c2s
        port = c2s.direct_tls_port if client.enable_direct_tls else c2s.port
        client.connect("127.0.0.1", port)

    async def close_all(self) -> None:
        # slixmpp replaces `client.disconnected` after each disconnect: await what disconnect() returns.
        pending = [client.disconnect(wait=0.5) for client in self.connected]
        for client, future in zip(self.connected, pending, strict=True):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(future, 3)
            client.abort()


@pytest.fixture
async def clients(server: Server) -> AsyncIterator[Clients]:
    pool = Clients(server)
    yield pool
    await pool.close_all()


def resolve(future: asyncio.Future[T], value: T) -> None:
    """Give `future` its result unless it has one (slixmpp events may fire more than once)."""
    if not future.done():
        future.set_result(value)


def reject(future: asyncio.Future[Any], error: BaseException) -> None:
    """Fail `future` with `error` unless it is already done."""
    if not future.done():
        future.set_exception(error)


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `predicate` until it holds (bounded); fail the test if it never does."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def next_event(client: slixmpp.ClientXMPP, event: str, timeout: float = 5.0) -> Any:
    """The next occurrence of a slixmpp event (e.g. 'message'), or a failed test after `timeout`."""
    return await client.wait_until(event, timeout)


async def result_of(sent: Awaitable[Iq | None] | None) -> Iq:
    """The answer to an IQ get/set a client sent (IqError if the server refused it).

    slixmpp types allow None: a component sends no roster IQ, and a result/error IQ awaits nothing.
    """
    if sent is None:
        raise AssertionError("slixmpp sent no IQ (a component has no roster)")
    answer = await sent
    if answer is None:
        raise AssertionError("slixmpp sent an IQ that expects no answer")
    return answer


async def raw_stream(
    server: Server, *, tls: bool = False
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A bare TCP (or Direct TLS) connection to the server for byte-level tests."""
    c2s = server.config.c2s
    if tls:
        context = ssl.create_default_context(cafile=str(server.config.path(server.config.tls.cert)))
        return await asyncio.open_connection(
            "127.0.0.1", c2s.direct_tls_port, ssl=context, server_hostname=DOMAIN
        )
    return await asyncio.open_connection("127.0.0.1", c2s.port)


async def read_until(reader: asyncio.StreamReader, marker: bytes, timeout: float = 5.0) -> bytes:
    """Read until `marker` appears or the peer closes; fail if neither happens in time."""
    data = b""
    deadline = asyncio.get_running_loop().time() + timeout
    while marker not in data:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise AssertionError(f"{marker!r} not received; got {data[-500:]!r}")
        chunk = await asyncio.wait_for(reader.read(65536), remaining)
        if not chunk:
            break
        data += chunk
    return data


Waiter = Callable[[], Awaitable[None]]
