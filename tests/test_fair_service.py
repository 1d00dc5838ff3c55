"""Fair service under abuse, over real sockets: connections per address are capped (issue 11 item 8) and a
flooding client is slowed down by traffic shaping while others keep chatting (item 3)."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import slixmpp
from conftest import PASSWORD, Clients, make_config, raw_stream, read_until, started_server, wait_for
from test_c2s import HEADER, plain, stream_error

from nitro.server import Server


async def opened_plain(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await raw_stream(server)
    writer.write(HEADER)
    await read_until(reader, b"</stream:features>")
    return reader, writer


# -- connections per address (item 8) -----------------------------------------------------------------


async def test_one_connection_too_many_from_an_address_is_a_policy_violation(tmp_path: Path) -> None:
    config = make_config(tmp_path, limits={"max_connections_per_address": 3})
    async with started_server(config) as server:
        clients = Clients(server)
        held = [await opened_plain(server) for _ in range(3)]
        reader, writer = await raw_stream(server)  # the fourth: refused at once, before its header
        data = await stream_error(reader, "policy-violation")
        assert b"too many connections from your address" in data
        assert data.startswith(b"<?xml version='1.0'?><stream:stream ")  # RFC 6120 §4.9.1.2
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and closed
        writer.close()
        assert server.transport_limits.addresses.count("127.0.0.1") == 3
        held[0][1].close()  # one leaves: there is room again
        await wait_for(lambda: server.transport_limits.addresses.count("127.0.0.1") == 2)
        reader, writer = await opened_plain(server)
        writer.write(b"<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        await read_until(reader, b"not-authorized")  # a stream like any other
        writer.close()
        for _reader, held_writer in held[1:]:
            held_writer.close()
        await wait_for(lambda: server.transport_limits.addresses.count("127.0.0.1") == 0)
        await clients.close_all()


async def test_exempt_addresses_and_direct_tls_share_the_count(tmp_path: Path) -> None:
    config = make_config(tmp_path, limits={"max_connections_per_address": 2})
    async with started_server(config) as server:
        plain_stream = await opened_plain(server)
        tls_reader, tls_writer = await raw_stream(server, tls=True)  # the second, over Direct TLS
        tls_writer.write(HEADER)
        await read_until(tls_reader, b"</stream:features>")
        reader, writer = await raw_stream(server, tls=True)
        await stream_error(reader, "policy-violation")
        for stream_writer in (writer, tls_writer, plain_stream[1]):
            stream_writer.close()
    config = make_config(
        tmp_path, limits={"max_connections_per_address": 2, "exempt_addresses": ["127.0.0.0/8"]}
    )
    async with started_server(config) as server:
        streams = [await opened_plain(server) for _ in range(6)]
        assert server.transport_limits.addresses.count("127.0.0.1") == 0
        for _reader, stream_writer in streams:
            stream_writer.close()


# -- traffic shaping (item 3) -------------------------------------------------------------------------------


async def raw_bound(server: Server, username: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await raw_stream(server, tls=True)
    writer.write(HEADER)
    await read_until(reader, b"</stream:features>")
    writer.write(plain(username, PASSWORD))
    await read_until(reader, b"<success")
    writer.write(HEADER)
    await read_until(reader, b"</stream:features>")
    writer.write(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    await read_until(reader, b"</iq>")
    return reader, writer


RATE = 20  # stanzas a second for the flooder and everyone else
WINDOW = 3.0  # seconds the flood is watched


async def test_a_flooding_client_is_slowed_while_another_pair_keeps_chatting(tmp_path: Path) -> None:
    """Mallory writes 300 messages to Bob at once; the server reads them at about RATE a second (and reads
    nothing more meanwhile), so in WINDOW seconds Bob gets about RATE * WINDOW + a burst of them, never all;
    Alice and Carol chat meanwhile with answers well under a second; nothing Mallory sent is lost."""
    limits = {"stanzas_per_second": RATE, "burst_seconds": 1.0, "bytes_per_second": 0}
    config = make_config(tmp_path, limits=limits, modules={"disabled": ["mam"]})
    async with started_server(config) as server:
        clients = Clients(server)
        try:
            for name in ("mallory", "bob", "alice", "carol"):
                await clients.user(name)
            bob = await clients.login("bob@localhost")
            got: list[float] = []
            bob.add_event_handler("message", lambda _m: got.append(time.monotonic()))
            alice = await clients.login("alice@localhost")
            carol = await clients.login("carol@localhost")
            answers: list[float] = []
            carol.add_event_handler("message", lambda m: carol.send_message(mto=m["from"], mbody="ack"))
            _reader, writer = await raw_bound(server, "mallory")
            count = 300
            writer.write(
                b"".join(
                    b"<message to='bob@localhost' type='chat' id='f%d'><body>%d</body></message>" % (n, n)
                    for n in range(count)
                )
            )
            started = time.monotonic()
            for n in range(10):  # Alice and Carol, during the flood
                sent = time.monotonic()
                alice.send_message(mto=slixmpp.JID("carol@localhost"), mbody=f"ping {n}", mtype="chat")
                await alice.wait_until("message", 5)
                answers.append(time.monotonic() - sent)
                await asyncio.sleep(max(0.0, started + (n + 1) * WINDOW / 10 - time.monotonic()))
            in_window = sum(1 for stamp in got if stamp - started <= WINDOW)
            assert in_window <= RATE * WINDOW + RATE * 2 + 20, in_window  # the rate, a burst, a margin
            assert in_window >= RATE, in_window  # slowed, not stopped
            assert max(answers) < 1.0, answers
            await wait_for(lambda: len(got) == count, count / RATE + 30)  # and every message arrives
        finally:
            await clients.close_all()


async def test_clear_text_after_starttls_is_dropped_even_when_shaping_splits_the_read(tmp_path: Path) -> None:
    """RFC 6120 §5.4.3.3: nothing sent before the TLS handshake belongs to the new stream. A shaped read takes
    1 kB of the 3 kB the client sent with `<starttls/>`; the rest, a stream header and an IQ injected in
    clear text, must not be read as the start of the encrypted stream."""
    config = make_config(tmp_path, limits={"bytes_per_second": 1000, "burst_seconds": 1.0})
    async with started_server(config) as server:
        reader, writer = await raw_stream(server)
        writer.write(HEADER)
        await read_until(reader, b"</stream:features>")
        await asyncio.sleep(1.5)  # the header's bytes paid back: the next read may take 1 kB
        injected = HEADER + b"<iq type='get' id='injected'><query xmlns='jabber:iq:register'/></iq>"
        writer.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" + b" " * 1500 + injected)
        await read_until(reader, b"<proceed")
        context = ssl.create_default_context(cafile=str(server.config.path(server.config.tls.cert)))
        await writer.start_tls(context, server_hostname="localhost")
        writer.write(HEADER)
        await read_until(reader, b"</stream:features>", timeout=10)
        writer.write(b"<iq type='get' id='mine'><query xmlns='jabber:iq:register'/></iq>")
        data = await read_until(reader, b'id="mine"', timeout=10)
        assert b"injected" not in data
        writer.close()
