"""An idle session's TCP connection parks (no task until something happens): it wakes on input, on the
peer's close, on its deadlines, on a stream error from elsewhere, at shutdown and when abandoned (upgrade);
and the timer wheel those deadlines sit on."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import Clients, make_config, read_until, wait_for
from test_c2s import stream_error
from test_connection import plain_config, raw_login
from test_logs import captured

from nitro.core.events import STANZA_FILTER, Pass, RoutedStanza, Verdict
from nitro.server import Server, running_server
from nitro.transports.deadline import Deadline, wheel_of
from nitro.transports.tcp import ClientConnection
from nitro.xmpp.jid import JID

ALICE = JID.parse("alice@localhost/raw")
PING = b"<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>"


@asynccontextmanager
async def parking_server(
    tmp_path: Path, limits: dict[str, object] | None = None, **c2s: Any
) -> AsyncIterator[Server]:
    """Plain TCP; a session is idle 0.2 s after its last input (its parser let go, its connection parked); no
    traffic shaping unless `limits` says."""
    sections = plain_config(tmp_path, **{"release_parser_after": 0.2, **c2s})
    if limits is not None:
        sections["limits"] = limits
    config = make_config(tmp_path, **sections)
    async with running_server(config) as server:
        await Clients(server).user("alice")
        yield server


def connection_of(server: Server, jid: JID = ALICE) -> ClientConnection:
    session = server.sessions.get(jid)
    assert session is not None
    connection = session.transport
    assert isinstance(connection, ClientConnection)
    return connection


async def parked(server: Server, jid: JID = ALICE) -> ClientConnection:
    connection = connection_of(server, jid)
    await wait_for(lambda: connection.parked, 5)
    return connection


async def test_a_parked_connection_reads_what_comes_and_parks_again(tmp_path: Path) -> None:
    async with parking_server(tmp_path) as server:
        reader, writer = await raw_login(server, "alice")
        connection = await parked(server)
        writer.write(PING)
        assert b'type="result"' in await read_until(reader, b"p1")
        await wait_for(lambda: connection.parked, 5)
        writer.write(PING.replace(b"p1", b"p2"))
        assert b"p2" in await read_until(reader, b"p2")
        writer.close()


async def test_a_parked_connection_at_full_credit_holds_no_shaper_and_is_shaped_again_when_woken(
    tmp_path: Path,
) -> None:
    """With a stanza rate of 100 a second (credit: 10), Alice's parked connection keeps no shaper once its
    credit is whole; then 300 pings at once are answered at that rate (by a new shaper), every one of them."""
    limits: dict[str, object] = {"stanzas_per_second": 100, "burst_seconds": 0.1, "bytes_per_second": 0}
    async with parking_server(tmp_path, limits=limits) as server:
        reader, writer = await raw_login(server, "alice")
        connection = await parked(server)
        writer.write(PING)
        await read_until(reader, b"p1")
        await wait_for(lambda: connection.parked and connection.incoming.resting, 5)
        count = 300
        writer.write(b"".join(PING.replace(b"p1", b"q%d" % n) for n in range(count)))
        sent = time.monotonic()
        data = b""
        in_first_second = 0
        while len(re.findall(rb"id=.q\d+", data)) < count:
            data += await asyncio.wait_for(reader.read(65536), 10)
            if time.monotonic() - sent < 1.0:
                in_first_second = len(re.findall(rb"id=.q\d+", data))
        assert in_first_second <= 10 + 100 + 10, in_first_second  # the credit, a second's rate, a margin
        writer.close()


async def test_a_session_parks_a_second_after_its_last_input_before_its_parser_is_let_go(
    tmp_path: Path,
) -> None:
    async with parking_server(tmp_path, release_parser_after=30.0) as server:
        reader, writer = await raw_login(server, "alice")
        connection = await parked(server)
        assert not connection.parser.released
        writer.write(PING)
        assert b'type="result"' in await read_until(reader, b"p1")
        writer.close()


async def test_a_stanza_cut_in_two_by_the_idle_time_arrives_whole(tmp_path: Path) -> None:
    """The parser is not let go mid-stanza; the connection parks anyway and the parse goes on."""
    async with parking_server(tmp_path) as server:
        reader, writer = await raw_login(server, "alice")
        await parked(server)
        writer.write(b"<message to='alice@localhost/raw' id='m1'><body>first ha")
        await asyncio.sleep(0.3)  # the idle time passes mid-stanza
        connection = await parked(server)
        assert not connection.parser.released
        writer.write(b"lf, second half</body></message>")
        assert b"first half, second half" in await read_until(reader, b"</message>")
        writer.close()


async def test_the_peer_closing_ends_a_parked_session(tmp_path: Path) -> None:
    async with parking_server(tmp_path) as server:
        _reader, writer = await raw_login(server, "alice")
        await parked(server)
        writer.close()
        await wait_for(lambda: server.sessions.get(ALICE) is None and not server.connections, 5)


async def test_a_parked_session_gets_its_keepalive(tmp_path: Path) -> None:
    async with parking_server(tmp_path, keepalive_interval=1.0) as server:
        reader, writer = await raw_login(server, "alice")
        connection = await parked(server)
        assert await asyncio.wait_for(reader.read(1), 5) == b" "  # RFC 6120 §4.6.1
        await wait_for(lambda: connection.parked, 5)
        writer.close()


async def test_a_parked_session_is_pinged_and_dropped_when_it_does_not_answer(tmp_path: Path) -> None:
    async with parking_server(tmp_path, idle_ping_after=1.0, ping_timeout=0.5) as server:
        reader, writer = await raw_login(server, "alice")
        await parked(server)
        assert b"urn:xmpp:ping" in await read_until(reader, b"urn:xmpp:ping")
        await stream_error(reader, "connection-timeout")
        await wait_for(lambda: server.sessions.get(ALICE) is None and not server.connections, 5)
        writer.close()


async def test_a_stream_error_from_elsewhere_wakes_and_ends_a_parked_connection(tmp_path: Path) -> None:
    """The same resource bound again: the parked first connection gets `<conflict/>` (RFC 6120 §4.9.3.3)."""
    async with parking_server(tmp_path) as server:
        first_reader, first_writer = await raw_login(server, "alice")
        first = await parked(server)
        _reader, writer = await raw_login(server, "alice")
        await stream_error(first_reader, "conflict")
        assert await asyncio.wait_for(first_reader.read(), 5) == b""  # and the server closed the socket
        assert connection_of(server) is not first
        first_writer.close()
        writer.close()


async def test_shutdown_closes_parked_connections(tmp_path: Path) -> None:
    async with parking_server(tmp_path) as server:
        reader, writer = await raw_login(server, "alice")
        await parked(server)
    await stream_error(reader, "system-shutdown")
    writer.close()


async def test_an_abandoned_parked_connection_closes_without_a_stream_error(tmp_path: Path) -> None:
    """What an upgrade does to a session it handed over (XEP-0198 §5): the socket just closes."""
    async with parking_server(tmp_path) as server:
        reader, writer = await raw_login(server, "alice")
        connection = await parked(server)
        connection.abandon()
        rest = await asyncio.wait_for(reader.read(), 5)
        assert b"stream:error" not in rest
        assert b"</stream:stream>" not in rest
        await wait_for(lambda: not server.connections, 5)
        writer.close()


async def test_a_woken_connection_logs_for_its_session(tmp_path: Path) -> None:
    """A new task serves the parked connection in the connection's context: what any module logs while
    handling its input names its session."""
    async with parking_server(tmp_path) as server:

        async def look(event: RoutedStanza) -> Verdict:
            server_log.info("filter saw %s", event.to)
            return Pass()

        server_log = logging.getLogger("nitro.tests.parked")
        server.bus.add_filter(STANZA_FILTER, look)
        reader, writer = await raw_login(server, "alice")
        await parked(server)
        with captured("text") as lines:
            writer.write(b"<message to='alice@localhost/raw' id='m1'><body>hi</body></message>")
            await read_until(reader, b"</message>")
        [line] = [line for line in lines.getvalue().splitlines() if "filter saw" in line]
        assert re.search(r"\[c2s\d+-[0-9a-f]+ alice@localhost/raw\] filter saw", line), line
        writer.close()


# -- the timer wheel ---------------------------------------------------------------------------------------


class Noted:
    """A deadline's owner noting when (and under which name) it was reached."""

    def __init__(self, reached: list[tuple[str, float]], name: str = "") -> None:
        self.reached = reached
        self.name = name

    def deadline_reached(self) -> None:
        self.reached.append((self.name, time.monotonic()))


async def test_a_deadline_is_reached_never_early_and_at_most_a_bucket_late() -> None:
    reached: list[tuple[str, float]] = []
    deadline = Deadline(asyncio.get_running_loop(), Noted(reached))
    due = time.monotonic() + 0.3
    deadline.set(due)
    await wait_for(lambda: bool(reached), 5)
    assert reached[0][1] >= due  # never early (late by up to RESOLUTION)
    assert deadline.consume()
    assert not deadline.consume()
    assert len(wheel_of(asyncio.get_running_loop())) == 0


async def test_a_deadline_moved_later_waits_for_the_new_time_and_one_moved_earlier_comes_sooner() -> None:
    loop = asyncio.get_running_loop()
    reached: list[tuple[str, float]] = []
    later = Deadline(loop, Noted(reached, "later"))
    sooner = Deadline(loop, Noted(reached, "sooner"))
    now = time.monotonic()
    later.set(now + 0.2)
    later.set(now + 1.0)  # stays in its bucket, is put back when reached
    sooner.set(now + 60.0)
    sooner.set(now + 0.4)  # moved to an earlier bucket
    await wait_for(lambda: len(reached) == 2, 5)
    assert [name for name, _ in reached] == ["sooner", "later"]
    assert reached[0][1] >= now + 0.4
    assert reached[1][1] >= now + 1.0


async def test_a_cancelled_deadline_leaves_nothing_behind() -> None:
    loop = asyncio.get_running_loop()
    wheel = wheel_of(loop)
    reached: list[tuple[str, float]] = []
    deadlines = [Deadline(loop, Noted(reached, str(n))) for n in range(100)]
    now = time.monotonic()
    for n, deadline in enumerate(deadlines):
        deadline.set(now + 0.1 + n * 0.05)
    assert len(wheel) == 100
    for deadline in deadlines[1:]:
        deadline.cancel()
    assert len(wheel) == 1
    await wait_for(lambda: [name for name, _ in reached] == ["0"], 5)
    assert len(wheel) == 0
    await asyncio.sleep(0.3)
    assert len(reached) == 1


@pytest.mark.parametrize("delay", [0.0, -1.0])
async def test_a_deadline_already_past_is_reached_on_the_next_bucket(delay: float) -> None:
    reached: list[tuple[str, float]] = []
    deadline = Deadline(asyncio.get_running_loop(), Noted(reached))
    deadline.set(time.monotonic() + delay)
    await wait_for(lambda: bool(reached), 2)
    assert deadline.due


def test_a_loops_timer_wheel_goes_with_the_loop() -> None:
    async def wheel_used() -> weakref.ref[asyncio.AbstractEventLoop]:
        loop = asyncio.get_running_loop()
        deadline = Deadline(loop, Noted([]))
        deadline.set(time.monotonic())
        await wait_for(lambda: deadline.due, 2)
        deadline.set(time.monotonic() + 60)  # still waiting when the loop ends
        return weakref.ref(loop)

    loop = asyncio.new_event_loop()
    gone = loop.run_until_complete(wheel_used())
    loop.close()
    del loop
    other = asyncio.new_event_loop()
    wheel_of(other)  # the next loop makes its wheel
    other.close()
    gc.collect()
    assert gone() is None
