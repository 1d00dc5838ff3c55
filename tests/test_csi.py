"""Client State Indication (XEP-0352) as transcripts: alice's phone goes inactive; bob's presence updates
and typing notifications wait for it, his messages do not; when the phone is active again it gets the
latest of what waited, in order."""

from __future__ import annotations

from typing import Any

import slixmpp
from conftest import DOMAIN, Clients, raw_stream, read_until, wait_for
from lxml import etree
from slixmpp.types import PresenceTypes
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from nitro.c2s.session import ClientSession
from nitro.c2s.transport import StreamHeader
from nitro.core.context import Session
from nitro.modules.csi import HOLDER, MAX_HELD, holder
from nitro.server import Server
from nitro.xmpp.errors import StreamError
from nitro.xmpp.jid import JID
from nitro.xmpp.stanza import stanza
from nitro.xmpp.xmlwrite import serialize

CSI = "urn:xmpp:csi:0"
CHATSTATES = "http://jabber.org/protocol/chatstates"
CLIENT = "jabber:client"


class Phone:
    """alice's phone: every message and presence it receives, in arrival order."""

    def __init__(self, client: slixmpp.ClientXMPP) -> None:
        self.client = client
        self.log: list[Any] = []
        client.register_handler(
            Callback("every message", MatchXPath(f"{{{CLIENT}}}message"), self.log.append)
        )
        client.add_event_handler("presence", self.log.append)

    @property
    def jid(self) -> str:
        return str(self.client.boundjid)

    def inactive(self) -> None:
        self.client.plugin["xep_0352"].send_inactive()

    def active(self) -> None:
        self.client.plugin["xep_0352"].send_active()

    async def settle(self) -> None:
        """Ping the server: everything it wrote to the phone before the answer has arrived."""
        await self.client.plugin["xep_0199"].send_ping(slixmpp.JID(DOMAIN), timeout=5)

    def seen(self) -> list[str]:
        """What arrived from bob, as short labels: 'presence:away', 'chatstate:composing', 'body:hi'."""
        labels = []
        for item in self.log:
            xml = item.xml
            if not str(item["from"]).startswith("bob@"):
                continue
            if xml.tag == f"{{{CLIENT}}}presence":
                labels.append(
                    f"presence:{xml.get('type') or xml.findtext(f'{{{CLIENT}}}show') or 'available'}"
                )
            elif (body := xml.findtext(f"{{{CLIENT}}}body")) is not None:
                labels.append(f"body:{body}")
            else:
                states = [
                    etree.QName(node.tag).localname
                    for node in xml
                    if node.tag.startswith(f"{{{CHATSTATES}}}")
                ]
                labels.append(f"chatstate:{','.join(states)}")
        return labels


class Bob:
    def __init__(self, client: slixmpp.ClientXMPP) -> None:
        self.client = client

    def presence(self, to: str, show: str | None = None, ptype: PresenceTypes | None = None) -> None:
        self.client.send_presence(pto=to, pshow=show, ptype=ptype)

    def chat_state(self, to: str, state: str) -> None:
        message = self.client.make_message(mto=to, mtype="chat")
        message.xml.append(ET.Element(f"{{{CHATSTATES}}}{state}"))
        message.send()

    def say(self, to: str, body: str) -> None:
        self.client.make_message(mto=to, mbody=body, mtype="chat").send()

    async def settle(self) -> None:
        """Ping the server: everything bob sent before has been routed."""
        await self.client.plugin["xep_0199"].send_ping(slixmpp.JID(DOMAIN), timeout=5)


async def phone_and_bob(clients: Clients) -> tuple[Phone, Bob]:
    alice, bob = await clients.user("alice"), await clients.user("bob")
    phone = await clients.login(f"{alice}/phone", plugins=["xep_0352"])
    assert phone.plugin["xep_0352"].enabled  # the server offered <csi/> after authentication
    return Phone(phone), Bob(await clients.login(f"{bob}/home"))


async def inactive_session(server: Server, phone: Phone) -> Session:
    phone.inactive()
    session = server.sessions.get(JID.parse(phone.jid))
    assert session is not None
    await wait_for(lambda: getattr(session.slots.peek(HOLDER), "inactive", False))
    return session


async def test_csi_is_offered_only_after_authentication(server: Server, clients: Clients) -> None:
    reader, writer = await raw_stream(server, tls=True)
    writer.write(
        b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
        b"xmlns:stream='http://etherx.jabber.org/streams'>"
    )
    features = await read_until(reader, b"</stream:features>")
    writer.close()
    assert CSI.encode() not in features

    phone, _bob = await phone_and_bob(clients)
    assert phone.client.plugin["xep_0352"].enabled


async def test_presence_waits_while_inactive_but_a_message_does_not(server: Server, clients: Clients) -> None:
    phone, bob = await phone_and_bob(clients)
    await inactive_session(server, phone)

    bob.presence(phone.jid, show="away")
    bob.presence(phone.jid, show="dnd")
    await bob.settle()
    await phone.settle()
    assert phone.seen() == []  # held

    bob.say(phone.jid, "Call me")
    await wait_for(lambda: phone.seen() == ["body:Call me"])  # never held

    phone.active()
    await wait_for(lambda: len(phone.seen()) == 2)
    await phone.settle()
    assert phone.seen() == ["body:Call me", "presence:dnd"]  # only the latest presence from bob/home


async def test_chat_states_wait_and_only_the_latest_is_delivered(server: Server, clients: Clients) -> None:
    phone, bob = await phone_and_bob(clients)
    await inactive_session(server, phone)

    bob.chat_state(phone.jid, "composing")
    bob.chat_state(phone.jid, "paused")
    bob.presence(phone.jid, show="away")
    await bob.settle()
    await phone.settle()
    assert phone.seen() == []

    phone.active()
    await wait_for(lambda: len(phone.seen()) == 2)
    await phone.settle()
    assert phone.seen() == ["chatstate:paused", "presence:away"]  # in the order they were held


async def test_a_message_makes_held_chat_states_of_that_conversation_stale(
    server: Server, clients: Clients
) -> None:
    phone, bob = await phone_and_bob(clients)
    await inactive_session(server, phone)

    bob.chat_state(phone.jid, "composing")
    bob.say(phone.jid, "Done typing")
    await wait_for(lambda: phone.seen() == ["body:Done typing"])

    phone.active()
    await phone.settle()
    assert phone.seen() == ["body:Done typing"]  # 'composing' after the message would be a lie


async def test_subscription_requests_and_iqs_are_never_held(server: Server, clients: Clients) -> None:
    phone, bob = await phone_and_bob(clients)
    await inactive_session(server, phone)
    requests: list[Any] = []
    phone.client.add_event_handler("presence_subscribe", requests.append)
    phone.client.auto_authorize = None  # leave the request unanswered: we only look at its delivery

    bob.presence("alice@localhost", ptype="subscribe")

    await wait_for(lambda: len(requests) == 1)
    await phone.settle()  # an IQ answered while inactive


async def test_without_inactive_nothing_is_held(clients: Clients) -> None:
    phone, bob = await phone_and_bob(clients)

    bob.presence(phone.jid, show="away")
    bob.chat_state(phone.jid, "composing")

    await wait_for(lambda: phone.seen() == ["presence:away", "chatstate:composing"])


async def test_an_unknown_csi_element_is_a_stream_error(clients: Clients) -> None:
    phone, _bob = await phone_and_bob(clients)
    errors: list[Any] = []
    phone.client.add_event_handler("stream_error", errors.append)

    phone.client.send_raw(f"<dozing xmlns='{CSI}'/>")

    await wait_for(lambda: len(errors) == 1)
    assert errors[0]["condition"] == "unsupported-stanza-type"


class Recorder:
    """A transport that keeps what the session writes (the session under test is real)."""

    kind = "test"
    peer_host = "127.0.0.1"
    encrypted = True
    can_starttls = False

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def open_stream(self, header: StreamHeader) -> None:
        raise AssertionError("not used")

    def send(self, element: etree._Element) -> None:
        self.written.append(serialize(element))

    def send_keepalive(self) -> None:
        pass

    def restart(self) -> None:
        raise AssertionError("not used")

    async def start_tls(self) -> None:
        raise AssertionError("not used")

    def close_stream(self, error: StreamError | None) -> None:
        pass

    def close(self) -> None:
        pass


async def test_the_held_queue_is_bounded(server: Server) -> None:
    recorder = Recorder()
    session = ClientSession(server, recorder, JID.parse(f"alice@{DOMAIN}/test"))
    held = holder(session)
    held.inactive = True

    for number in range(MAX_HELD):
        session.send(stanza("presence", from_=f"contact{number}@{DOMAIN}/r"))
    assert recorder.written == []

    session.send(stanza("presence", from_=f"one-too-many@{DOMAIN}/r"))

    assert len(recorder.written) == MAX_HELD + 1  # everything, in order, and nothing held any more
    assert b"contact0@" in recorder.written[0]
    assert b"one-too-many@" in recorder.written[-1]
    assert held.held == {}
