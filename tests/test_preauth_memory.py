"""Memory a stream makes the XML parser hold before authentication is bounded and given back (issue 11
item 1): distinct names past a budget close the stream, and unauthenticated streams are parsed on threads
whose name dictionaries are freed with them."""

from __future__ import annotations

import gc
import secrets
import threading
import weakref

import pytest
import slixmpp
from conftest import Clients, raw_stream, read_until, wait_for
from lxml import etree
from test_c2s import HEADER, logged_in, still_serving, stream_error

from nitro.server import Server
from nitro.transports.isolation import PreauthParsing
from nitro.xmpp.errors import StreamError
from nitro.xmpp.xmlstream import XMLStreamParser


def distinct_names(count: int) -> bytes:
    """An IQ with `count` element and attribute names nobody used before."""
    tag = secrets.token_hex(4)
    attributes = b" ".join(b"a%s%d='1'" % (tag.encode(), n) for n in range(count // 2))
    children = b"".join(b"<e%s%d/>" % (tag.encode(), n) for n in range(count - count // 2))
    return b"<iq type='get' id='x' " + attributes + b">" + children + b"</iq>"


async def test_a_client_without_an_account_sending_many_names_is_cut_off(
    server: Server, clients: Clients
) -> None:
    reader, writer = await raw_stream(server, tls=True)
    writer.write(HEADER)
    await read_until(reader, b"</stream:features>")
    writer.write(distinct_names(server.config.limits.max_names_before_auth + 10))
    data = await stream_error(reader, "policy-violation")
    assert b"distinct XML names" in data
    writer.close()
    await still_serving(clients)


async def test_an_authenticated_client_is_not_held_to_the_budget(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    reader, writer = await logged_in(server, "alice")
    names = distinct_names(server.config.limits.max_names_before_auth * 2)
    writer.write(
        names.replace(b"<iq type='get' id='x'", b"<message to='alice@localhost/raw' id='m1'", 1)[:-5]
    )
    writer.write(b"</message>")
    assert b'id="m1"' in await read_until(reader, b"</message>")
    writer.close()


async def test_parsing_threads_end_with_the_unauthenticated_streams(server: Server, clients: Clients) -> None:
    """Fifty streams that never log in are parsed on pre-authentication threads (one per 64 streams);
    once they are gone, at most the current thread is left, and logged-in clients are parsed without one."""
    streams = []
    for _ in range(50):
        reader, writer = await raw_stream(server)
        writer.write(HEADER)
        streams.append((reader, writer))
    for reader, _writer in streams:
        await read_until(reader, b"</stream:features>")
    assert server.transport_limits.preauth.threads >= 1
    for _reader, writer in streams:
        writer.close()
    await wait_for(lambda: not server.connections, 10)
    assert server.transport_limits.preauth.threads <= 1
    alice = await clients.login(await clients.user("alice"))
    alice.send_message(mto=slixmpp.JID("alice@localhost"), mbody="hello")
    assert (await alice.wait_until("message", 5))["body"] == "hello"


class _Token:
    """An argument whose lifetime a test can watch."""


def test_a_lane_call_leaves_nothing_of_its_arguments_on_the_thread() -> None:
    """A stream's parser handed to its lane's thread is not kept there once the call has returned: kept until
    the thread's next call or its end, it would become garbage then, on that thread, at any later time."""
    parsing = PreauthParsing(lambda: 64)
    try:
        lane = parsing.lane()
        assert lane is not None
        token = _Token()
        watch = weakref.ref(token)
        assert lane.run(isinstance, token, _Token)
        del token
        assert watch() is None
        lane.release()
    finally:
        parsing.close()


def test_a_stopped_parsing_thread_has_ended_when_the_stop_returns() -> None:
    """The next generation's thread starts after the last one has exited, so it reuses the malloc arena that
    one gave back instead of taking a new one (see the test of rounds below)."""
    parsing = PreauthParsing(lambda: 1)  # a generation per stream
    before = set(threading.enumerate())
    first = parsing.lane()
    assert first is not None
    first.run(len, b"x")
    (first_thread,) = set(threading.enumerate()) - before
    first.release()  # still the current generation: its thread waits for the next stream
    assert first_thread.is_alive()
    second = parsing.lane()  # the first generation is full and empty: it is stopped
    assert second is not None
    assert not first_thread.is_alive()
    second.run(len, b"x")
    (second_thread,) = set(threading.enumerate()) - before
    parsing.close()
    assert not second_thread.is_alive()


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def hostile_streams(parsing: PreauthParsing, streams: int, names: int) -> None:
    """Parse `streams` streams of `names` distinct names each, on lanes, then let them go."""
    lanes = []
    parsers = []
    for _ in range(streams):
        lane = parsing.lane()
        assert lane is not None
        parser = XMLStreamParser(max_stanza_bytes=1 << 20)
        lane.run(parser.feed, HEADER)
        for _chunk in range(names // 500):
            lane.run(parser.feed, distinct_names(500))
        lanes.append(lane)
        parsers.append(parser)
    parsers.clear()
    for lane in lanes:
        lane.release()


async def test_names_parsed_on_lanes_are_given_back_when_their_streams_end() -> None:
    """Rounds of 64 streams with 4,000 distinct names each (some 13 MB of lxml's name dictionary a round):
    a round's dictionary is freed with its thread once its streams are gone and the next round reuses the
    memory, so the process stops growing after the second round. (On the event loop's thread the same
    rounds grow the process for good: see integration/bench_abuse.py.)"""
    parsing = PreauthParsing(lambda: 64)
    gc.collect()
    before = rss_kib()
    growth = []
    for _round in range(5):
        hostile_streams(parsing, 64, 4000)
        gc.collect()
        growth.append(rss_kib() - before)
    parsing.close()
    assert growth[0] > 8_000, growth  # the names really took memory
    assert growth[-1] - growth[1] < growth[0] / 2, growth


def test_a_stream_cut_off_for_its_names_leaves_nothing_for_the_garbage_collector() -> None:
    """The names of a start tag are counted once it is complete: one of 2,500 attributes has made libxml2
    build a megabyte of nodes by then. lxml's parser, its unread events and their document form a cycle,
    which would hold that until the collector runs (rarely, with the server's GC settings); `dispose`,
    which the transport calls when the connection ends, lets it go at once."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        parser = XMLStreamParser(max_names=256)
        parser.feed(HEADER)
        with pytest.raises(StreamError, match="distinct XML names"):
            parser.feed(distinct_names(5000))
        parser.dispose()
        del parser
        gc.collect()
        left = [item for item in gc.garbage if isinstance(item, etree.XMLPullParser | etree._Element)]
        assert left == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
