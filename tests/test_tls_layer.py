"""TLS run by Nitro (nitro/transports/tls_layer.py), over real sockets, each scenario on asyncio's loop and on
uvloop's (which `make run` serves on): what is not a TLS handshake is refused with an alert and a close, a
handshake that never ends is cut off, close_notify comes with the stream's close, large stanzas cross intact
both ways, no connection sees another's records (they share memory BIOs), and a client that stops reading is
cut off as over plain TCP."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop
from conftest import DOMAIN, Clients, make_config, raw_stream, read_until, started_server, wait_for
from test_c2s import HEADER, still_serving
from test_connection import raw_login

from nitro.config import Config
from nitro.server import Server
from nitro.transports import tls_layer
from nitro.transports.tcp import ClientConnection
from nitro.transports.tls_layer import SLICE, TLSTransport
from nitro.xmpp.jid import JID

STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
ALERT = 0x15  # TLS record type of an alert (RFC 8446 §5.1)


def config_for(tmp_path: Path) -> Config:
    """Handshakes (and negotiations) must finish within 3 s, a client that does not read is cut off after 1 s;
    no shaping and no archive (the flood is about output)."""
    return make_config(
        tmp_path,
        c2s={"negotiation_timeout": 3.0, "write_timeout": 1.0},
        limits={"bytes_per_second": 0, "stanzas_per_second": 0},
        modules={"disabled": ["mam"]},
    )


def client_context(server: Server) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.config.path(server.config.tls.cert)))


async def until_closed(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not within `timeout`)."""
    data = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            data += chunk
    return data


async def proceeded(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain stream that asked for STARTTLS and was told to proceed."""
    reader, writer = await raw_stream(server)
    writer.write(HEADER)
    await read_until(reader, b"</stream:features>")
    writer.write(STARTTLS)
    await read_until(reader, b"<proceed")
    return reader, writer


async def no_connections_left(server: Server) -> None:
    await wait_for(lambda: server.transport_limits.addresses.count("127.0.0.1") == 0, 10)


def only_an_alert(data: bytes) -> None:
    """Nothing but (at most) TLS alert records: no XML, no handshake answered."""
    while data:
        assert data[0] == ALERT, data[:40]
        length = int.from_bytes(data[3:5], "big")
        data = data[5 + length :]


# -- what is not TLS ----------------------------------------------------------------------------------------


async def refused(
    server: Server, stream: tuple[asyncio.StreamReader, asyncio.StreamWriter], sent: bytes, eof: bool = False
) -> None:
    """`sent` (then, with `eof`, the end of the client's output) gets an alert at most, and the close."""
    reader, writer = stream
    writer.write(sent)
    if eof:
        writer.write_eof()
    only_an_alert(await until_closed(reader))
    writer.close()


async def direct_tls(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.config.c2s.direct_tls_port)


async def clear_text_after_proceed(server: Server, clients: Clients) -> None:
    """A client that ignores `<proceed/>` and carries on in the clear gets an alert and the close."""
    await refused(server, await proceeded(server), HEADER)
    await no_connections_left(server)
    await still_serving(clients)


async def garbage_instead_of_a_client_hello(server: Server, clients: Clients) -> None:
    """On the Direct TLS port: an XMPP header, a broken ClientHello, zeros, HTTP: each an alert, a close."""
    garbage = [
        HEADER,
        b"\x16\x03\x01\x00\x05hello",
        b"\x00" * 64,
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ]
    for sent in garbage:
        await refused(server, await direct_tls(server), sent)
    await no_connections_left(server)
    await still_serving(clients)


async def a_peer_that_hangs_up_mid_handshake(server: Server, clients: Clients) -> None:
    await refused(server, await direct_tls(server), client_hello(server)[:20], eof=True)
    await no_connections_left(server)


def client_hello(server: Server) -> bytes:
    """The first flight of a real client."""
    outgoing = ssl.MemoryBIO()
    client = client_context(server).wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=DOMAIN)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


# -- a handshake that never finishes -------------------------------------------------------------------------


async def a_direct_tls_handshake_that_never_finishes(server: Server, clients: Clients) -> None:
    """Nothing after connecting, or half a ClientHello: closed after the negotiation timeout."""
    silent, halfway = await direct_tls(server), await direct_tls(server)
    hello = client_hello(server)
    halfway[1].write(hello[: len(hello) // 2])
    for reader, writer in (silent, halfway):
        assert await until_closed(reader) == b""
        writer.close()
    await no_connections_left(server)


async def a_starttls_handshake_that_never_finishes(server: Server, clients: Clients) -> None:
    reader, writer = await proceeded(server)
    assert await until_closed(reader) == b""  # nothing after <proceed/>: the handshake never started
    writer.close()
    await no_connections_left(server)


# -- closing ---------------------------------------------------------------------------------------------


async def tls_client(
    server: Server, stream: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A client SSLObject that finished its handshake over `stream`, and its incoming and outgoing BIOs."""
    reader, writer = stream
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context(server).wrap_bio(incoming, outgoing, server_hostname=DOMAIN)
    while True:
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            writer.write(outgoing.read())
            incoming.write(await asyncio.wait_for(reader.read(65536), 5))
    writer.write(outgoing.read())
    return client, incoming, outgoing


async def the_streams_close_comes_with_close_notify(server: Server, clients: Clients) -> None:
    """The client ends its stream; the server answers with its own close, then close_notify (RFC 8446 §6.1),
    read here through a client SSLObject, where a bare TCP close would raise SSLEOFError instead."""
    reader, writer = await proceeded(server)
    client, incoming, outgoing = await tls_client(server, (reader, writer))
    client.write(HEADER + b"</stream:stream>")
    writer.write(outgoing.read())
    received = await until_closed(reader)
    assert received
    incoming.write(received)
    incoming.write_eof()
    plaintext = b""
    while chunk := client.read(65536):  # b"" at close_notify
        plaintext += chunk
    assert plaintext.endswith(b"</stream:stream>"), plaintext[-200:]
    writer.close()


async def a_client_close_notify_ends_the_stream(server: Server, clients: Clients) -> None:
    reader, writer = await raw_stream(server, tls=True)
    writer.write(HEADER)
    await read_until(reader, b"</stream:features>")
    writer.close()  # asyncio's TLS sends close_notify first; the server's eof_received ends the stream
    await no_connections_left(server)


# -- data through TLS ---------------------------------------------------------------------------------------


async def a_large_stanza_crosses_intact_both_ways(server: Server, clients: Clients) -> None:
    """A message many times SLICE long, sent in one write, comes back from the server in one piece."""
    await clients.user("alice")
    reader, writer = await raw_login(server, "alice", tls=client_context(server))
    [session] = server.sessions.sessions_of(JID.parse("alice@localhost"))
    assert isinstance(session.transport, ClientConnection)
    assert isinstance(session.transport.transport, TLSTransport)
    body = "".join(f"{n:07d}" for n in range(SLICE * 8 // 7))
    message = f"<message to='alice@localhost/raw' type='chat' id='big'><body>{body}</body></message>"
    writer.write(message.encode())
    data = await read_until(reader, b"</message>", timeout=10)
    found = re.search(rb"<body>(\d+)</body>", data)
    assert found is not None
    assert found.group(1).decode() == body
    writer.close()


async def no_connection_sees_anothers_records(server: Server, clients: Clients) -> None:
    """The TLS connections of a loop share two memory BIOs (tls_layer._SharedBIOs): what one leaves behind
    when it fails (a record then garbage, in one write), stops (half a record) or ends (data after its
    close_notify) reaches no other connection, and the sessions alongside carry on intact."""
    for name in ("alice", "bob"):
        await clients.user(name)
    alice = await raw_login(server, "alice", tls=client_context(server))
    bob = await raw_login(server, "bob", tls=client_context(server))
    broken, halfway, closing = await direct_tls(server), await direct_tls(server), await direct_tls(server)
    broken_client, _, broken_out = await tls_client(server, broken)
    halfway_client, _, halfway_out = await tls_client(server, halfway)
    closing_client, _, closing_out = await tls_client(server, closing)
    body = "".join(f"{n:07d}" for n in range(SLICE * 3 // 7))
    for round_ in range(3):
        broken_client.write(HEADER)
        halfway_client.write(HEADER)
        closing_client.write(HEADER)
        record = halfway_out.read()
        halfway[1].write(record[: len(record) // 2])
        with contextlib.suppress(ssl.SSLError):
            closing_client.unwrap()
        closing[1].write(closing_out.read() + b"\x17\x03\x03\x00\x05hello")
        broken[1].write(broken_out.read() + b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
        to_bob = f"<message to='bob@localhost/raw' type='chat' id='b{round_}'><body>{body}</body></message>"
        alice[1].write(to_bob.encode())
        data = await read_until(bob[0], b"</message>", timeout=10)
        found = re.search(rb"<body>(\d+)</body>", data)
        assert found is not None
        assert found.group(1).decode() == body
        bob[1].write(
            f"<message to='alice@localhost/raw' type='chat' id='a{round_}'><body>ok</body></message>".encode()
        )
        assert f'id="a{round_}"'.encode() in await read_until(alice[0], b"<body>ok</body>", timeout=10)
        assert (tls_layer._BIOS.incoming.pending, tls_layer._BIOS.outgoing.pending) == (0, 0)
        for reader, writer in (broken, closing):  # each got an alert or its close, then the close
            await until_closed(reader)
            writer.close()
        broken, closing = await direct_tls(server), await direct_tls(server)
        broken_client, _, broken_out = await tls_client(server, broken)
        closing_client, _, closing_out = await tls_client(server, closing)
    for _reader, writer in (alice, bob, broken, halfway, closing):
        writer.close()


BODY = "x" * 1000
COUNT = 5000  # 5.5 MB: more than the socket buffers hold, less than MAX_WRITE_BUFFER


async def a_client_that_stops_reading(server: Server, clients: Clients) -> None:
    """Over Direct TLS as over plain TCP (tests/test_connection.py): Bob, who reads nothing while Alice floods
    him, is dropped after write_timeout; Carol, flooded the same way but reading, receives every message in
    order."""
    for name in ("alice", "bob", "carol"):
        await clients.user(name)
    bob = await raw_login(server, "bob", tls=client_context(server), receive_buffer=4096)
    bob[1].transport.pause_reading()  # type: ignore[attr-defined]  # typed WriteTransport; it reads too
    carol = await raw_login(server, "carol", tls=client_context(server))
    alice = await raw_login(server, "alice", tls=client_context(server))
    for to in ("bob@localhost/raw", "carol@localhost/raw"):
        alice[1].write(
            b"".join(
                f"<message to='{to}' type='chat' id='m{n}'><body>{n} {BODY}</body></message>".encode()
                for n in range(COUNT)
            )
        )
    data = await read_until(carol[0], f"<body>{COUNT - 1} {BODY}</body>".encode(), 60)
    assert [int(n) for n in re.findall(rb"<body>(\d+) x", data)] == list(range(COUNT))
    await wait_for(lambda: server.sessions.get(JID.parse("bob@localhost/raw")) is None, 30)
    alice[1].write(b"<iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert b"p2" in await read_until(alice[0], b"p2", timeout=10)
    for _reader, writer in (alice, bob, carol):
        writer.close()


# -- each scenario on both loops ----------------------------------------------------------------------------

Scenario = Callable[[Server, Clients], Awaitable[None]]
SCENARIOS: list[Scenario] = [
    clear_text_after_proceed,
    garbage_instead_of_a_client_hello,
    a_peer_that_hangs_up_mid_handshake,
    a_direct_tls_handshake_that_never_finishes,
    a_starttls_handshake_that_never_finishes,
    the_streams_close_comes_with_close_notify,
    a_client_close_notify_ends_the_stream,
    a_large_stanza_crosses_intact_both_ways,
    no_connection_sees_anothers_records,
    a_client_that_stops_reading,
]


async def run_scenario(tmp_path: Path, scenario: Scenario) -> None:
    async with started_server(config_for(tmp_path)) as server:
        clients = Clients(server)
        try:
            await scenario(server, clients)
        finally:
            await clients.close_all()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.__name__)
async def test_on_asyncio(tmp_path: Path, scenario: Scenario) -> None:
    await run_scenario(tmp_path, scenario)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.__name__)
def test_on_uvloop(tmp_path: Path, scenario: Scenario) -> None:
    uvloop.run(run_scenario(tmp_path, scenario))
