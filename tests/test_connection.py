"""The connection driver: batched writes keep order, a slow reader catches up, one that stops is cut off."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import slixmpp
from conftest import DOMAIN, PASSWORD, Clients, make_config, read_until, wait_for
from test_c2s import HEADER, plain

from nitro.core.context import Session
from nitro.server import Server, running_server
from nitro.transports.tcp import ClientConnection
from nitro.xmpp.jid import JID

BODY = "x" * 1000
SMALL_BUFFER = 4096
BOB = JID.parse("bob@localhost/raw")
COUNT = 5000  # messages of 1.1 kB: more than the kernel's socket buffers (4 MB) hold, below MAX_WRITE_BUFFER


async def raw_login(
    server: Server, username: str, *, receive_buffer: int | None = None, tls: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain-TCP (with `tls`, Direct TLS) raw stream logged in with PLAIN and bound to 'raw'; optionally a
    tiny receive buffer, so that what the server writes piles up on its side as soon as this client stops
    reading."""
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    port = server.config.c2s.direct_tls_port if tls is not None else server.config.c2s.port
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    hostname = DOMAIN if tls is not None else None
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**20, ssl=tls, server_hostname=hostname)
    writer.write(HEADER)
    await read_until(reader, b"</stream:features>")
    writer.write(plain(username, PASSWORD))
    await read_until(reader, b"<success")
    writer.write(HEADER)
    await read_until(reader, b"</stream:features>")
    writer.write(
        b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        b"<resource>raw</resource></bind></iq>"
    )
    await read_until(reader, b"</iq>")
    return reader, writer


def plain_config(tmp_path: Path, **c2s: object) -> dict[str, dict[str, object]]:
    """Plain TCP with PLAIN, and no archive, whose SQLite write per message would pace the flood; no traffic
    shaping either (these floods are about output; tests/test_fair_service.py shapes input)."""
    return {
        "c2s": {"require_encryption": False, "allow_plain_without_tls": True, **c2s},
        "modules": {"disabled": ["mam"]},
        "limits": {"bytes_per_second": 0, "stanzas_per_second": 0},
    }


def flood(writer: asyncio.StreamWriter, to: str, count: int) -> None:
    writer.write(
        b"".join(
            f"<message to='{to}' type='chat' id='m{n}'><body>{n} {BODY}</body></message>".encode()
            for n in range(count)
        )
    )


async def test_many_messages_arrive_in_the_order_they_were_sent(server: Server, clients: Clients) -> None:
    """Alice sends 300 messages as fast as slixmpp can; Bob receives every one, in order."""
    alice, bob = await clients.user("alice"), await clients.user("bob")
    sender = await clients.login(alice)
    receiver = await clients.login(bob)
    received: list[str] = []
    receiver.add_event_handler("message", lambda message: received.append(message["body"]))
    for n in range(300):
        sender.send_message(mto=slixmpp.JID(bob), mbody=str(n), mtype="chat")
    await wait_for(lambda: len(received) == 300, 20)
    assert received == [str(n) for n in range(300)]


@dataclass
class Flooded:
    """Bob (not reading, tiny receive buffer) and Alice, who has just sent COUNT messages to him."""

    server: Server
    bob: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    alice: tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def bob_flooded(tmp_path: Path, write_timeout: float) -> AsyncIterator[Flooded]:
    config = make_config(tmp_path, **plain_config(tmp_path, write_timeout=write_timeout))
    async with running_server(config) as server:
        clients = Clients(server)
        await clients.user("alice")
        await clients.user("bob")
        bob = await raw_login(server, "bob", receive_buffer=SMALL_BUFFER)
        bob[1].transport.pause_reading()  # type: ignore[attr-defined]  # typed WriteTransport; TCP reads too
        alice = await raw_login(server, "alice")
        assert server.sessions.get(BOB) is not None
        flood(alice[1], str(BOB), COUNT)
        try:
            yield Flooded(server, bob, alice)
        finally:
            bob[1].close()
            alice[1].close()


async def test_a_slow_reader_gets_everything_once_it_reads(tmp_path: Path) -> None:
    """Bob stops reading while 5.5 MB of messages are sent to him, more than the socket buffers hold: they
    pile up on the server (which stops reading from Bob meanwhile) and all arrive, in order, when he reads
    again."""
    async with bob_flooded(tmp_path, write_timeout=30.0) as flooded:
        session = flooded.server.sessions.get(BOB)
        assert session is not None
        await wait_for(lambda: backlog(session) > 100_000, 15)  # Bob reads nothing meanwhile
        reader, writer = flooded.bob
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 2**20)  # now he reads quickly
        writer.transport.resume_reading()  # type: ignore[attr-defined]  # typed WriteTransport; TCP reads too
        data = await read_until(reader, f"<body>{COUNT - 1} {BODY}</body></message>".encode(), 30)
        numbers = [int(n) for n in re.findall(rb"<body>(\d+) x", data)]
        assert numbers == list(range(COUNT))
        writer.write(b"<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert b"p1" in await read_until(reader, b"p1")  # still connected


def backlog(session: Session) -> int:
    """Bytes the server holds for `session` that the socket did not take yet."""
    transport = session.transport
    assert isinstance(transport, ClientConnection)
    assert transport.transport is not None
    return transport.transport.get_write_buffer_size()


async def test_a_client_that_stops_reading_is_cut_off_after_write_timeout(tmp_path: Path) -> None:
    """Bob never reads while Alice floods him: after write_timeout seconds with the server's send buffer
    full, Bob's connection is dropped and his session ends; Alice and the server carry on."""
    async with bob_flooded(tmp_path, write_timeout=1.0) as flooded:
        await wait_for(lambda: flooded.server.sessions.get(BOB) is None, 15)
        reader, writer = flooded.alice
        writer.write(b"<iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert b"p2" in await read_until(reader, b"p2", timeout=10)


async def test_an_idle_session_frees_its_parser_and_reads_on_when_the_client_speaks(tmp_path: Path) -> None:
    config = make_config(tmp_path, c2s={"release_parser_after": 0.3})
    async with running_server(config) as server:
        clients = Clients(server)
        try:
            alice = await clients.user("alice")
            client = await clients.login(alice)
            [session] = server.sessions.sessions_of(JID.parse(alice))
            connection = session.transport
            assert isinstance(connection, ClientConnection)  # sessions show modules only PeerInfo
            await wait_for(lambda: connection.parser.released, 10)
            client.send_message(mto=slixmpp.JID(alice), mbody="still listening?")
            message = await client.wait_until("message", 5)
            assert message["body"] == "still listening?"
            await wait_for(lambda: connection.parser.released, 10)  # and freed again once idle
        finally:
            await clients.close_all()
