"""The shared limits, sans-IO: token buckets, stanza costs, connections per address, the parser's name budget,
and the pre-authentication parsing threads."""

from __future__ import annotations

import os
import threading
import time

import pytest
from lxml import etree

from nitro.config import ConfigError, LimitsSection, parse_config
from nitro.transports.isolation import PreauthParsing
from nitro.transports.limits import AddressCounter, Shaper, TokenBucket, address_key, cost, new_shaper
from nitro.xmpp.errors import StreamError
from nitro.xmpp.xmlstream import StanzaReceived, StreamClosed, StreamOpened, XMLStreamParser

HEADER = (
    b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xml:lang='en'>"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stanza(xml: str) -> StanzaReceived:
    return StanzaReceived(etree.fromstring(f"<wrap xmlns='jabber:client'>{xml}</wrap>")[0])


# -- token buckets and the shaper ------------------------------------------------------------------------


def test_a_bucket_gives_its_burst_then_its_rate_and_debts_are_paid_before_the_next() -> None:
    bucket = TokenBucket.full(rate=100, burst_seconds=2, now=0.0)
    bucket.take(200, 0.0)
    assert bucket.wait(0.0) == 0.0  # the burst: 2 s worth
    bucket.take(50, 0.0)  # never refused: it leaves a debt
    assert bucket.wait(0.0) == pytest.approx(0.5)
    assert bucket.wait(0.25) == pytest.approx(0.25)
    assert bucket.wait(0.5) == 0.0
    assert bucket.wait(100.0) == 0.0
    bucket.take(250, 100.0)  # saved up no more than the burst
    assert bucket.wait(100.0) == pytest.approx(0.5)


def test_a_rate_of_zero_is_unlimited() -> None:
    bucket = TokenBucket.full(rate=0, burst_seconds=2, now=0.0)
    bucket.take(10**9, 0.0)
    assert bucket.wait(0.0) == 0.0


def test_the_shaper_waits_for_the_slower_of_bytes_and_stanzas() -> None:
    clock = Clock()
    shaper = Shaper(LimitsSection(bytes_per_second=1000, stanzas_per_second=10, burst_seconds=1), clock)
    shaper.take_bytes(1500)
    assert shaper.delay() == pytest.approx(0.5)
    for _ in range(15):
        shaper.take(stanza("<message to='a@localhost'/>"))
    assert shaper.delay() == pytest.approx(0.5)
    shaper.take(stanza("<iq type='set' id='r'><query xmlns='jabber:iq:roster'/></iq>"))
    assert shaper.delay() == pytest.approx(1.0)  # a roster set costs 5
    clock.now += 1.0
    assert shaper.delay() == 0.0


def test_a_shaper_is_rested_once_its_credit_is_whole_again_and_without_rates_one_is_shared() -> None:
    clock = Clock()
    limits = LimitsSection(bytes_per_second=1000, stanzas_per_second=10, burst_seconds=1)
    shaper = Shaper(limits, clock)
    assert shaper.rested()
    shaper.take_bytes(500)
    assert not shaper.rested()
    clock.now += 0.25
    assert not shaper.rested()
    clock.now += 0.25
    assert shaper.rested()
    shaper.take(stanza("<message to='a@localhost'/>"))
    assert not shaper.rested()
    assert new_shaper(limits) is not new_shaper(limits)
    unlimited = LimitsSection(bytes_per_second=0, stanzas_per_second=0)
    shared = new_shaper(unlimited)
    assert shared is new_shaper(unlimited)
    shared.take_bytes(10**9)
    assert shared.unlimited
    assert shared.delay() == 0.0
    assert shared.allowance() is None
    assert shared.rested()


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        ("<message to='a@localhost'><body>hi</body></message>", 1),
        ("<presence/>", 1),
        ("<presence type='subscribe' to='a@localhost'/>", 5),
        ("<presence type='unsubscribed' to='a@localhost'/>", 5),
        ("<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>", 1),
        ("<iq type='set' id='1'><query xmlns='jabber:iq:roster'/></iq>", 5),
        ("<iq type='set' id='1'><query xmlns='jabber:iq:register'/></iq>", 20),
        ("<iq type='set' id='1'><query xmlns='urn:xmpp:mam:2'/></iq>", 10),
        ("<iq type='set' id='1'/>", 1),
    ],
)
def test_costly_requests_cost_more(xml: str, expected: int) -> None:
    assert cost(stanza(xml)) == expected


def test_sasl_steps_cost_more_and_the_end_of_the_stream_nothing() -> None:
    auth = etree.fromstring(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AA==</auth>")
    assert cost(StanzaReceived(auth)) == 10
    assert cost(StreamOpened("localhost", None, "1.0", None, None, "jabber:client")) == 1
    assert cost(StreamClosed()) == 0


# -- connections per address -------------------------------------------------------------------------------


def test_connections_are_counted_per_address_up_to_the_cap() -> None:
    limits = LimitsSection(max_connections_per_address=2)
    counter = AddressCounter(lambda: limits)
    first, second = counter.acquire("192.0.2.1"), counter.acquire("192.0.2.1")
    assert first is not None
    assert second is not None
    assert counter.acquire("192.0.2.1") is None
    assert counter.acquire("192.0.2.2") is not None  # another address has its own count
    first.release()
    first.release()  # releasing twice counts once
    assert counter.count("192.0.2.1") == 1
    assert counter.acquire("192.0.2.1") is not None


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("local") == "local"


def test_exempt_addresses_are_not_counted_and_a_reload_does_not_skew_the_count() -> None:
    limits = LimitsSection(max_connections_per_address=1, exempt_addresses=("127.0.0.0/8", "::1"))
    counter = AddressCounter(lambda: limits)
    slots = [counter.acquire("127.0.0.1") for _ in range(5)]
    assert all(slot is not None for slot in slots)
    assert counter.acquire("::1") is not None
    assert counter.count("127.0.0.1") == 0
    limits = LimitsSection(max_connections_per_address=1)  # loopback no longer exempt
    assert counter.acquire("127.0.0.1") is not None
    assert counter.acquire("127.0.0.1") is None
    for slot in slots:
        assert slot is not None
        slot.release()  # taken while exempt: they never counted and uncount nothing
    assert counter.count("127.0.0.1") == 1


def test_a_cap_of_zero_counts_nothing() -> None:
    counter = AddressCounter(lambda: LimitsSection(max_connections_per_address=0))
    assert all(counter.acquire("192.0.2.1") is not None for _ in range(1000))


def test_exempt_entries_must_be_addresses_or_networks() -> None:
    with pytest.raises(ConfigError, match=r"\[limits\].exempt_addresses: 'localhost'"):
        parse_config({"limits": {"exempt_addresses": ["localhost"]}})
    with pytest.raises(ConfigError, match=r"\[limits\].burst_seconds must be positive"):
        parse_config({"limits": {"burst_seconds": 0}})
    with pytest.raises(ConfigError, match=r"\[stream_management\].max_unacked_bytes must be at least"):
        parse_config({"stream_management": {"max_unacked_bytes": 100}})


# -- the parser's name budget (issue 11 item 1) ---------------------------------------------------------


def test_a_login_fits_the_default_name_budget() -> None:
    parser = XMLStreamParser(max_names=LimitsSection().max_names_before_auth)
    parser.feed(HEADER)
    parser.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    parser.feed(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>biws</auth>")
    parser.feed(b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>Yz1iaXdz</response>")
    form = (
        b"<iq type='set' id='reg1' to='localhost'><query xmlns='jabber:iq:register'>"
        b"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
        b"<value>jabber:iq:register</value></field><field var='username'><value>a</value></field>"
        b"<field var='password'><value>b</value></field></x></query></iq>"
    )
    assert len(parser.feed(form)) == 1


def test_distinct_names_past_the_budget_are_a_policy_violation() -> None:
    parser = XMLStreamParser(max_names=50)
    parser.feed(HEADER)
    parser.feed(b"<message><a1/><a2/><a3/></message>" * 20)  # the same names again and again: fine
    names = b"".join(b"<n%d/>" % i for i in range(60))
    with pytest.raises(StreamError) as raised:
        parser.feed(b"<message>" + names + b"</message>")
    assert raised.value.condition == "policy-violation"
    assert "distinct XML names" in (raised.value.text or "")


@pytest.mark.parametrize(
    "hostile",
    [
        b"<iq " + b" ".join(b"a%d='1'" % i for i in range(60)) + b"/>",  # attribute names
        b"<iq " + b" ".join(b"xmlns:p%d='urn:x'" % i for i in range(60)) + b"/>",  # namespace prefixes
        b"<iq><" + b"n" * 4000 + b"/></iq>",  # one long name counts as many
    ],
)
def test_attribute_names_prefixes_and_long_names_count(hostile: bytes) -> None:
    parser = XMLStreamParser(max_names=50)
    parser.feed(HEADER)
    with pytest.raises(StreamError, match="distinct XML names"):
        parser.feed(hostile)


def test_without_a_budget_or_after_a_reset_without_one_names_are_not_counted() -> None:
    parser = XMLStreamParser(max_names=20)
    parser.feed(HEADER)
    parser.max_names = None  # authenticated: the transport lifts the budget for the next stream
    parser.reset()
    parser.feed(HEADER)
    assert len(parser.feed(b"<message>" + b"".join(b"<n%d/>" % i for i in range(500)) + b"</message>")) == 1


# -- pre-authentication parsing threads -----------------------------------------------------------------


def _thread_name() -> str:
    return threading.current_thread().name


def test_lanes_run_on_a_generation_thread_that_ends_with_its_last_stream() -> None:
    size = 2
    parsing = PreauthParsing(lambda: size)
    lanes = [parsing.lane() for _ in range(5)]
    assert all(lane is not None for lane in lanes)
    names = [lane.run(_thread_name) for lane in lanes if lane is not None]
    assert names[0] == names[1] != names[2] == names[3] != names[4]
    assert all(name.startswith("nitro-preauth-") for name in names)
    assert parsing.threads == 3
    for lane in lanes[:2]:
        assert lane is not None
        lane.release()
    assert parsing.threads == 2  # the first generation is full and empty: its thread is stopped
    assert lanes[0] is not None
    assert lanes[0].run(_thread_name) == threading.current_thread().name  # a released lane runs inline
    for lane in lanes[2:]:
        assert lane is not None
        lane.release()
    assert parsing.threads == 1  # the current generation stays for the next streams
    parsing.close()
    assert parsing.threads == 0


def test_errors_raised_on_the_lane_reach_the_caller() -> None:
    parsing = PreauthParsing(lambda: 8)
    lane = parsing.lane()
    assert lane is not None
    parser = XMLStreamParser()
    lane.run(parser.feed, HEADER)
    with pytest.raises(StreamError) as raised:
        lane.run(parser.feed, b"<message><unclosed></message>")
    assert raised.value.condition == "not-well-formed"
    lane.release()
    parsing.close()


def test_calls_put_off_run_on_the_lanes_thread_before_its_next_call_or_as_it_stops() -> None:
    """A restart's old parser is freed on the thread that parsed it, with the lane's next call (no hop of its
    own); a lane whose thread stops first frees it then; a released lane runs it at once, on the caller's."""
    parsing = PreauthParsing(lambda: 2)
    first, second = parsing.lane(), parsing.lane()
    assert first is not None
    assert second is not None
    ran: list[tuple[str, str]] = []
    first.later(lambda what: ran.append((what, _thread_name())), "put off")
    assert ran == []
    lane_thread = second.run(_thread_name)  # any stream's next call on the generation runs it first
    assert ran == [("put off", lane_thread)]
    assert lane_thread.startswith("nitro-preauth-")
    ran.clear()
    second.later(lambda: ran.append(("at the stop", _thread_name())))
    first.release()
    third = parsing.lane()  # on a new generation: the first one, full, is retired
    assert third is not None
    assert ran == []  # a stream still holds the first generation
    second.release()  # its last stream leaves: the thread stops, running what was put off before it ends
    assert ran == [("at the stop", lane_thread)]
    second.later(lambda: ran.append(("released", _thread_name())))
    assert ran[-1] == ("released", threading.current_thread().name)
    third.release()
    parsing.close()


def test_a_failing_call_put_off_is_logged_and_the_next_call_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    parsing = PreauthParsing(lambda: 8)
    lane = parsing.lane()
    assert lane is not None

    def broken() -> None:
        raise RuntimeError("broken")

    lane.later(broken)
    assert lane.run(_thread_name).startswith("nitro-preauth-")
    assert "a call put off on a pre-authentication parsing thread failed" in caplog.text
    lane.release()
    parsing.close()


def _parsing_threads_ended(timeout: float = 5.0) -> None:
    """Until every pre-authentication parsing thread has ended (each closes its pipes as it ends)."""
    deadline = time.monotonic() + timeout
    while any(thread.name.startswith("nitro-preauth-") for thread in threading.enumerate()):
        assert time.monotonic() < deadline, "a parsing thread did not end"
        time.sleep(0.01)


def test_a_stopped_parsing_thread_closes_its_pipes() -> None:
    """Each thread hands calls over through two pipes; they go with it (no descriptors left per thread)."""
    _parsing_threads_ended()  # those of earlier tests too
    before = len(os.listdir("/proc/self/fd"))
    parsing = PreauthParsing(lambda: 1)
    lanes = [parsing.lane() for _ in range(20)]
    for lane in lanes:
        assert lane is not None
        lane.run(_thread_name)
    assert len(os.listdir("/proc/self/fd")) >= before + 4 * 19
    for lane in lanes:
        assert lane is not None
        lane.release()
    parsing.close()
    _parsing_threads_ended()
    assert len(os.listdir("/proc/self/fd")) == before


def test_no_threads_when_turned_off() -> None:
    assert PreauthParsing(lambda: 0).lane() is None
