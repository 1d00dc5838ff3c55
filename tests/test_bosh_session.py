"""The sans-IO BOSH core as transcripts: request bodies in, stream events and replies out, on a fake clock."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from lxml import etree

from nitro.xmpp import ns
from nitro.xmpp.bosh import HTTPBIND, XBOSH, parse_body
from nitro.xmpp.bosh_session import BoshSession, Reply, Settings
from nitro.xmpp.xmlstream import StanzaReceived, StreamClosed, StreamOpened

SID = "s1"
RID = 1000
STANZA = b"<message xmlns='jabber:client' to='bob@localhost'><body>hi</body></message>"


def request(
    rid: int,
    *,
    sid: str | None = SID,
    content: bytes = b"",
    extra: Mapping[str, str] | None = None,
    **attrs: str,
) -> bytes:
    """A request body; attribute names with '__' stand for a prefix (xmpp__restart is xmpp:restart)."""
    merged = {**attrs, **(extra or {})}
    rendered = "".join(f" {name.replace('__', ':')}='{value}'" for name, value in merged.items())
    sid_attr = f" sid='{sid}'" if sid else ""
    return (
        f"<body xmlns='{HTTPBIND}' xmlns:xmpp='{XBOSH}' rid='{rid}'{sid_attr}{rendered}>".encode()
        + content
        + b"</body>"
    )


def start(
    now: float = 0.0, settings: Settings | None = None, attrs: Mapping[str, str] | None = None
) -> tuple[BoshSession, list[object]]:
    """A session from its creation request (handle 1); the stream's answer is queued as it would be."""
    defaults = {"to": "localhost", "ver": "1.11", "wait": "30", "hold": "1"}
    creation = parse_body(request(RID, sid=None, extra={**defaults, **(attrs or {})}), max_stanza_bytes=10000)
    session = BoshSession(SID, creation, settings or Settings(), "localhost", now)
    events: list[object] = list(session.create(1, creation, now))
    session.stream_opened("stream-id")
    return session, events


def receive(session: BoshSession, handle: int, data: bytes, now: float = 0.0) -> list[object]:
    return list(session.receive(handle, parse_body(data, max_stanza_bytes=10000), now))


def answered(replies: list[Reply]) -> dict[int, etree._Element]:
    return {reply.handle: etree.fromstring(reply.body) for reply in replies}


def attributes(element: etree._Element) -> dict[str, str]:
    return {str(name): str(value) for name, value in element.attrib.items()}


def kinds(events: list[object]) -> list[str]:
    """Events by name: 'open', 'close', or a stanza's local name with its rid-ordered text."""
    names = []
    for event in events:
        if isinstance(event, StreamOpened):
            names.append("open")
        elif isinstance(event, StreamClosed):
            names.append("close")
        else:
            assert isinstance(event, StanzaReceived)
            names.append(etree.QName(event.element).localname + (event.element.findtext("{*}body") or ""))
    return names


def ready(now: float = 0.0, attrs: Mapping[str, str] | None = None) -> BoshSession:
    """A session whose creation request was answered (nothing held)."""
    session, _ = start(now, attrs=attrs)
    session.send(b"<stream:features/>")
    session.flush(now)
    return session


def message(text: str) -> bytes:
    return f"<message xmlns='jabber:client' to='bob@localhost'><body>{text}</body></message>".encode()


def test_creation_response_carries_the_session_parameters() -> None:
    session, events = start(
        settings=Settings(max_wait=20, max_hold=1, inactivity=40, polling=3, max_pause=99)
    )
    assert events == [StreamOpened("localhost", None, "1.0", None, None, ns.CLIENT)]
    assert session.flush(0.0) == []  # held until the stream has something to say (XEP-0124 §8)
    session.send(b"<stream:features/>")
    (reply,) = session.flush(0.0)
    first = etree.fromstring(reply.body)
    assert reply.handle == 1
    assert first.tag == f"{{{HTTPBIND}}}body"
    assert attributes(first) == {
        "sid": SID,
        "wait": "20",  # the client's 30, capped
        "requests": "2",
        "hold": "1",
        "inactivity": "40",
        "polling": "3",
        "maxpause": "99",
        "ver": "1.11",
        "from": "localhost",
        "secure": "true",
        f"{{{XBOSH}}}version": "1.0",
        f"{{{XBOSH}}}restartlogic": "true",
        "authid": "stream-id",
    }
    assert first[0].tag == f"{{{ns.STREAM}}}features"
    session.send(STANZA)
    receive(session, 2, request(RID + 1))
    (later,) = session.flush(0.0)
    assert "sid" not in etree.fromstring(later.body).attrib  # §7.2: the first response only


@pytest.mark.parametrize(
    ("attrs", "condition"),
    [
        ({"to": "elsewhere.example"}, "host-unknown"),
        ({"to": "user@localhost"}, "host-unknown"),
        ({}, "improper-addressing"),
        ({"to": "localhost", "wait": "soon"}, "bad-request"),
        ({"to": "localhost", "hold": "-1"}, "bad-request"),
    ],
)
def test_creation_refused(attrs: dict[str, str], condition: str) -> None:
    from nitro.xmpp.bosh import BoshError

    creation = parse_body(request(RID, sid=None, extra=attrs), max_stanza_bytes=10000)
    with pytest.raises(BoshError) as refused:
        BoshSession(SID, creation, Settings(), "localhost", 0.0)
    assert refused.value.condition == condition


def test_hold_answers_the_oldest_request_when_a_new_one_comes() -> None:
    session = ready()
    assert receive(session, 2, request(RID + 1)) == []
    assert session.flush(0.0) == []  # one held: hold = 1
    assert kinds(receive(session, 3, request(RID + 2, content=message("a")))) == ["messagea"]
    replies = session.flush(0.0)
    assert [reply.handle for reply in replies] == [2]  # the older one goes back empty
    assert len(answered(replies)[2]) == 0
    session.send(STANZA)
    (reply,) = session.flush(0.0)
    assert reply.handle == 3
    (stanza,) = answered([reply])[3]
    assert stanza.tag == f"{{{ns.CLIENT}}}message"


def test_output_while_processing_waits_for_the_end_of_the_request() -> None:
    session = ready()
    receive(session, 2, request(RID + 1))
    session.processing = True
    session.send(STANZA)
    assert session.flush(0.0) == []
    session.processing = False
    assert [reply.handle for reply in session.flush(0.0)] == [2]


def test_wait_answers_a_held_request_empty() -> None:
    session = ready(now=100.0)
    receive(session, 2, request(RID + 1), now=101.0)
    assert session.next_deadline() == 131.0  # 'wait' is 30
    assert session.flush(130.9) == []
    (reply,) = session.flush(131.0)
    assert reply.handle == 2
    assert len(etree.fromstring(reply.body)) == 0


def test_requests_out_of_order_wait_for_the_gap() -> None:
    session = ready()
    assert receive(session, 3, request(RID + 2, content=message("second"))) == []
    events = receive(session, 2, request(RID + 1, content=message("first")))
    assert kinds(events) == ["messagefirst", "messagesecond"]  # §14.2: forwarded in rid order


def test_rid_beyond_the_window_terminates_with_item_not_found() -> None:
    session = ready()
    receive(session, 2, request(RID + 1))
    assert receive(session, 3, request(RID + 4)) == []  # the window is 'requests' (2) past the last rid
    replies = answered(session.flush(0.0))
    for handle in (2, 3):
        assert replies[handle].get("type") == "terminate"
        assert replies[handle].get("condition") == "item-not-found"
    assert session.terminated


def test_a_repeated_rid_gets_the_same_response_again() -> None:
    session = ready()
    receive(session, 2, request(RID + 1))
    session.send(STANZA)
    (original,) = session.flush(0.0)
    receive(session, 3, request(RID + 1))  # §14.3: the response was lost on the way
    (again,) = session.flush(0.0)
    assert again == Reply(3, original.body)
    assert not session.terminated


def test_a_repeated_rid_no_longer_buffered_is_item_not_found() -> None:
    session = ready()
    for offset in range(1, 5):
        receive(session, 10 + offset, request(RID + offset))
        session.flush(0.0)
    receive(session, 20, request(RID + 1))  # only the last 'requests' responses are kept
    replies = answered(session.flush(0.0))
    assert replies[20].get("condition") == "item-not-found"
    assert replies[14].get("condition") == "item-not-found"  # the session is over: the held one too


def test_a_repeated_rid_still_held_takes_its_place() -> None:
    session = ready()
    receive(session, 2, request(RID + 1))
    receive(session, 3, request(RID + 1))  # the client gave up on the first connection
    replies = session.flush(0.0)
    assert [reply.handle for reply in replies] == [2]
    session.send(STANZA)
    assert [reply.handle for reply in session.flush(0.0)] == [3]


def test_too_many_simultaneous_requests_is_a_policy_violation() -> None:
    session = ready()
    receive(session, 2, request(RID + 1, content=message("slow")))
    session.processing = True  # the stream is still busy with it: nothing is answered meanwhile
    receive(session, 3, request(RID + 2))
    receive(session, 4, request(RID + 3))  # a third open request; 'requests' is 2
    replies = answered(session.flush(0.0))
    assert replies[4].get("condition") == "policy-violation"  # §11
    assert set(replies) == {2, 3, 4}
    assert session.terminated


def test_one_more_request_is_allowed_to_pause_or_terminate() -> None:
    session = ready()
    receive(session, 2, request(RID + 1, content=message("slow")))
    session.processing = True
    receive(session, 3, request(RID + 2))
    assert kinds(receive(session, 4, request(RID + 3, type="terminate"))) == ["close"]
    assert not session.terminated


def test_polling_too_often_is_a_policy_violation() -> None:
    session = ready(now=0.0, attrs={"hold": "0"})
    receive(session, 2, request(RID + 1), now=1.0)
    session.flush(1.0)
    receive(session, 3, request(RID + 2), now=4.0)  # 'polling' is 2 s: fine
    session.flush(4.0)
    receive(session, 4, request(RID + 3), now=5.0)
    (reply,) = session.flush(5.0)
    assert etree.fromstring(reply.body).get("condition") == "policy-violation"  # §12


def test_inactivity_ends_the_session_and_a_pause_extends_it_once() -> None:
    session = ready(now=0.0)
    assert not session.inactive(59.9)
    assert session.inactive(60.0)  # 'inactivity' is 60
    receive(session, 2, request(RID + 1, content=message("x")), now=10.0)
    receive(session, 3, request(RID + 2, pause="120"), now=10.0)
    session.send(STANZA)
    replies = answered(session.flush(10.0))
    assert len(replies[2]) == 1
    assert len(replies[3]) == 0  # §10: no payloads in the pause response
    assert not session.inactive(129.0)
    assert session.inactive(130.0)
    receive(session, 4, request(RID + 3, pause="9999"), now=20.0)  # capped to maxpause (300)
    session.flush(20.0)
    assert not session.inactive(319.0)
    assert session.inactive(320.0)


def test_stream_restart_only_after_sasl_success() -> None:
    session = ready()
    assert receive(session, 2, request(RID + 1, xmpp__restart="true")) == []
    (reply,) = session.flush(0.0)
    assert etree.fromstring(reply.body).get("condition") == "policy-violation"

    session = ready()
    session.expect_restart()
    events = receive(session, 2, request(RID + 1, xmpp__restart="true", xml__lang="de"))
    assert kinds(events) == ["open"]
    assert isinstance(events[0], StreamOpened)
    assert events[0].lang == "de"


def test_client_terminate_delivers_payloads_then_closes() -> None:
    session = ready()
    events = receive(session, 2, request(RID + 1, type="terminate", content=message("bye")))
    assert kinds(events) == ["messagebye", "close"]
    session.terminate(None)
    (reply,) = session.flush(0.0)
    assert attributes(etree.fromstring(reply.body)) == {"type": "terminate"}
    receive(session, 3, request(RID + 2))  # the session is over
    (late,) = session.flush(0.0)
    assert etree.fromstring(late.body).get("type") == "terminate"


def test_our_terminate_carries_queued_payloads_and_the_stream_error() -> None:
    session = ready()
    receive(session, 2, request(RID + 1))
    session.processing = True
    session.send(STANZA)
    error = b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
    session.terminate("remote-stream-error", error)
    session.processing = False
    (reply,) = session.flush(0.0)
    terminal = etree.fromstring(reply.body)
    assert terminal.get("condition") == "remote-stream-error"
    assert [child.tag for child in terminal] == [f"{{{ns.CLIENT}}}message", f"{{{ns.STREAM}}}error"]


def test_acks_when_the_client_asks_for_them() -> None:
    session, _ = start(attrs={"ack": "1"})
    session.send(b"<stream:features/>")
    (creation,) = session.flush(0.0)
    assert etree.fromstring(creation.body).get("ack") == str(RID)  # §9.1
    receive(session, 2, request(RID + 1, ack=str(RID)), now=1.0)
    receive(session, 3, request(RID + 2, ack=str(RID)), now=2.0)
    (older,) = session.flush(2.0)
    assert older.handle == 2
    assert etree.fromstring(older.body).get("ack") == str(RID + 2)  # a later request came meanwhile
    session.send(STANZA)
    (newer,) = session.flush(3.0)
    assert etree.fromstring(newer.body).get("ack") is None  # it would be its own rid
    receive(session, 4, request(RID + 3, ack=str(RID)), now=4.5)  # RID + 1's response never arrived
    session.send(STANZA)
    (reported,) = session.flush(4.5)
    attributes = etree.fromstring(reported.body).attrib
    assert attributes["report"] == str(RID + 1)
    assert attributes["time"] == "2500"  # ms since that response was sent (§9.2)


def test_a_legacy_client_gets_http_status_codes() -> None:
    creation = parse_body(request(RID, sid=None, to="localhost", wait="30", hold="1"), max_stanza_bytes=10000)
    session = BoshSession(SID, creation, Settings(), "localhost", 0.0)  # no 'ver' (§17.1)
    session.create(1, creation, 0.0)
    session.send(b"<stream:features/>")
    session.flush(0.0)
    receive(session, 2, request(RID + 9))
    (reply,) = session.flush(0.0)
    assert (reply.status, reply.body) == (404, b"")
