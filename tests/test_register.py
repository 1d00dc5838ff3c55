"""In-band registration (XEP-0077): sign up, change password, cancel — over real TLS streams."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DOMAIN, PASSWORD, Clients, make_config, raw_stream, wait_for
from lxml import etree
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET

from nitro.accounts import create_account
from nitro.modules.register import SignupWindow
from nitro.server import Server, running_server
from nitro.xmpp import ns

HEADER = (
    f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='{ns.STREAM}' "
    f"to='{DOMAIN}' version='1.0'>"
).encode()
STANZA_ERRORS = f"{{{ns.STANZA_ERRORS}}}"
READ_TIMEOUT = 5.0


class RawClient:
    """A byte-level client over Direct TLS: writes XML, reads whole top-level elements."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._new_parser()

    def _new_parser(self) -> None:
        self.parser = etree.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.ready: list[etree._Element] = []

    async def open(self) -> etree._Element:
        """Send a stream header; return the server's stream features."""
        self._new_parser()
        self.writer.write(HEADER)
        features = await self.next()
        assert features.tag == f"{{{ns.STREAM}}}features"
        return features

    async def next(self) -> etree._Element:
        while not self.ready:
            data = await asyncio.wait_for(self.reader.read(65536), READ_TIMEOUT)
            if not data:
                raise EOFError("the server closed the stream")
            self.parser.feed(data)
            for event, node in self.parser.read_events():
                if event == "start":
                    self.depth += 1
                else:
                    self.depth -= 1
                    if self.depth == 1 and isinstance(node, etree._Element):  # start/end events: elements
                        self.ready.append(node)
        return self.ready.pop(0)

    async def iq(self, xml: str) -> etree._Element:
        self.writer.write(xml.encode())
        return await self.next()

    async def login(self, username: str, password: str) -> bool:
        """SASL PLAIN (RFC 6120 §6, RFC 4616); on success the stream restarts."""
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        self.writer.write(f"<auth xmlns='{ns.SASL}' mechanism='PLAIN'>{token}</auth>".encode())
        outcome = await self.next()
        if outcome.tag != f"{{{ns.SASL}}}success":
            return False
        await self.open()
        return True


@contextlib.asynccontextmanager
async def raw_client(server: Server) -> AsyncIterator[tuple[RawClient, etree._Element]]:
    reader, writer = await raw_stream(server, tls=True)
    client = RawClient(reader, writer)
    try:
        yield client, await client.open()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def register_iq(username: str | None, password: str | None, iq_id: str = "reg1") -> str:
    fields = ""
    if username is not None:
        fields += f"<username>{username}</username>"
    if password is not None:
        fields += f"<password>{password}</password>"
    return f"<iq type='set' id='{iq_id}'><query xmlns='{ns.REGISTER}'>{fields}</query></iq>"


def condition(iq: etree._Element) -> str | None:
    """The defined condition of an error reply, None for a result."""
    if iq.get("type") != "error":
        return None
    error = iq.find(f"{{{ns.CLIENT}}}error")
    assert error is not None
    return next(etree.QName(node).localname for node in error if str(node.tag).startswith(STANZA_ERRORS))


async def can_login(server: Server, username: str, password: str) -> bool:
    async with raw_client(server) as (client, _features):
        return await client.login(username, password)


# -- before authentication ------------------------------------------------------------------------------


async def test_registration_is_a_stream_feature_and_a_form(server: Server) -> None:
    async with raw_client(server) as (client, features):
        assert features.find(f"{{{ns.REGISTER_FEATURE}}}register") is not None
        answer = await client.iq(f"<iq type='get' id='g1'><query xmlns='{ns.REGISTER}'/></iq>")

    assert answer.get("type") == "result"
    assert answer.get("id") == "g1"
    query = answer.find(f"{{{ns.REGISTER}}}query")
    assert query is not None
    assert query.find(f"{{{ns.REGISTER}}}username") is not None
    assert query.find(f"{{{ns.REGISTER}}}password") is not None
    assert query.find(f"{{{ns.REGISTER}}}registered") is None
    form = query.find(f"{{{ns.DATA_FORMS}}}x")
    assert form is not None
    assert {f.get("var") for f in form} >= {"FORM_TYPE", "username", "password"}


async def test_carol_registers_with_slixmpp_then_logs_in(server: Server, clients: Clients) -> None:
    """slixmpp's xep_0077 flow: registration fields, then the same stream authenticates."""
    carol = clients.make(f"carol@{DOMAIN}", PASSWORD, plugins=["xep_0077", "xep_0004", "xep_0066"])
    started = asyncio.get_running_loop().create_future()

    async def on_register(form: Any) -> None:
        iq = carol.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = "carol"
        iq["register"]["password"] = PASSWORD
        await iq.send()

    carol.add_event_handler("register", on_register)
    carol.add_event_handler("session_start", lambda _event: started.set_result(True))
    await clients.connect(carol)
    await asyncio.wait_for(started, 15)

    assert await server.storage.accounts.exists("carol")
    assert str(carol.boundjid.bare) == f"carol@{DOMAIN}"


async def test_registration_with_a_data_form(server: Server) -> None:
    form = (
        f"<x xmlns='{ns.DATA_FORMS}' type='submit'>"
        f"<field var='FORM_TYPE' type='hidden'><value>{ns.REGISTER}</value></field>"
        f"<field var='username'><value>dora</value></field>"
        f"<field var='password'><value>{PASSWORD}</value></field></x>"
    )
    async with raw_client(server) as (client, _features):
        answer = await client.iq(f"<iq type='set' id='f1'><query xmlns='{ns.REGISTER}'>{form}</query></iq>")
        assert condition(answer) is None
        assert await client.login("dora", PASSWORD)


async def test_username_is_prepared_like_a_jid_localpart(server: Server) -> None:
    async with raw_client(server) as (client, _features):
        assert condition(await client.iq(register_iq("Erin", PASSWORD))) is None

    assert await server.storage.accounts.exists("erin")  # RFC 7622 §3.3: UsernameCaseMapped
    assert await can_login(server, "erin", PASSWORD)


@pytest.mark.parametrize(
    ("username", "password", "expected"),
    [
        (None, PASSWORD, "not-acceptable"),  # XEP-0077 §3.1: required information missing
        ("", PASSWORD, "not-acceptable"),
        ("frank", None, "not-acceptable"),
        ("frank", "", "not-acceptable"),  # §3.1 note: an empty password is missing information
        ("frank", "short", "not-acceptable"),  # below registration.min_password_length
        ("frank smith", PASSWORD, "not-acceptable"),  # not a valid localpart (RFC 7622 §3.3)
        ("frank@example", PASSWORD, "not-acceptable"),
    ],
)
async def test_bad_registration_fields_are_not_acceptable(
    server: Server, username: str | None, password: str | None, expected: str
) -> None:
    async with raw_client(server) as (client, _features):
        answer = await client.iq(register_iq(username, password))

    assert condition(answer) == expected
    assert await server.storage.accounts.count() == 0


async def test_a_taken_username_is_a_conflict(server: Server, clients: Clients) -> None:
    await clients.user("alice")

    async with raw_client(server) as (client, _features):
        answer = await client.iq(register_iq("alice", "another password"))

    assert condition(answer) == "conflict"  # XEP-0077 §3.1
    assert await can_login(server, "alice", PASSWORD)


async def test_one_registration_per_stream(server: Server) -> None:
    """XEP-0077 §3.1.1: after registering, the entity should authenticate, not register again."""
    async with raw_client(server) as (client, _features):
        assert condition(await client.iq(register_iq("gina", PASSWORD, "r1"))) is None
        assert condition(await client.iq(register_iq("gina2", PASSWORD, "r2"))) == "not-acceptable"

    assert not await server.storage.accounts.exists("gina2")


async def test_cancelling_before_login_is_unexpected(server: Server) -> None:
    async with raw_client(server) as (client, _features):
        answer = await client.iq(
            f"<iq type='set' id='u1'><query xmlns='{ns.REGISTER}'><remove/></query></iq>"
        )

    assert condition(answer) == "unexpected-request"  # XEP-0077 §3.2 error table


@pytest.fixture
async def throttled(tmp_path: Path) -> AsyncIterator[Server]:
    """A server that limits loopback too (the tests connect from 127.0.0.1, exempt by default)."""
    config = make_config(tmp_path, registration={"throttle_exempt": [], "max_per_address": 3})
    async with running_server(config) as server:
        yield server


async def test_registrations_per_address_are_throttled(throttled: Server) -> None:
    server = throttled
    for n in range(server.config.registration.max_per_address):
        async with raw_client(server) as (client, _features):
            assert condition(await client.iq(register_iq(f"user{n}", PASSWORD))) is None

    async with raw_client(server) as (client, _features):
        answer = await client.iq(register_iq("one-too-many", PASSWORD))

    assert condition(answer) == "resource-constraint"
    error = answer.find(f"{{{ns.CLIENT}}}error")
    assert error is not None
    assert error.get("type") == "wait"
    assert not await server.storage.accounts.exists("one-too-many")


async def test_failed_registrations_do_not_count_towards_the_limit(throttled: Server) -> None:
    """Issue 11 item 15: only created accounts count, not a taken username (conflict) or a refused one."""
    server = throttled
    await create_account(server.storage, "taken", PASSWORD)
    limit = server.config.registration.max_per_address
    for attempt in range(2 * limit):
        async with raw_client(server) as (client, _features):
            assert condition(await client.iq(register_iq("taken", PASSWORD, f"c{attempt}"))) == "conflict"
            bad = await client.iq(register_iq("bad@name", PASSWORD, f"b{attempt}"))
            assert condition(bad) == "not-acceptable"

    for n in range(limit):  # the whole allowance is still there
        async with raw_client(server) as (client, _features):
            assert condition(await client.iq(register_iq(f"fresh{n}", PASSWORD))) is None
    async with raw_client(server) as (client, _features):
        assert condition(await client.iq(register_iq("one-too-many", PASSWORD))) == "resource-constraint"


async def test_loopback_is_exempt_by_default(tmp_path: Path) -> None:
    """Like Prosody, 127.0.0.1 and ::1 are not limited unless [registration].throttle_exempt says so."""
    config = make_config(tmp_path, registration={"max_per_address": 1})
    assert config.registration.throttle_exempt == ("127.0.0.1", "::1")
    async with running_server(config) as server:
        for n in range(3):
            async with raw_client(server) as (client, _features):
                assert condition(await client.iq(register_iq(f"local{n}", PASSWORD))) is None


@pytest.mark.parametrize(
    ("exempt", "limited"),
    [
        (["127.0.0.0/8"], False),
        (["10.0.0.0/8", "127.0.0.1/32"], False),
        (["10.0.0.0/8", "::1"], True),
    ],
)
async def test_throttle_exemption_takes_cidr_networks(
    tmp_path: Path, exempt: list[str], limited: bool
) -> None:
    config = make_config(tmp_path, registration={"max_per_address": 1, "throttle_exempt": exempt})
    async with running_server(config) as server:
        outcomes = []
        for n in range(2):
            async with raw_client(server) as (client, _features):
                outcomes.append(condition(await client.iq(register_iq(f"net{n}", PASSWORD))))
    assert outcomes == ([None, "resource-constraint"] if limited else [None, None])


def test_the_exemption_list_understands_addresses_and_networks() -> None:
    window = SignupWindow(1, 60.0, ["127.0.0.1", "::1", "192.0.2.0/24", "2001:db8::/32"])
    for host in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "192.0.2.77", "2001:db8::5"):
        assert window.is_exempt(host), host
    for host in ("127.0.0.2", "198.51.100.1", "2001:db9::1", "local", "detached"):
        assert not window.is_exempt(host), host


def test_a_released_slot_is_free_again_and_slots_age_out() -> None:
    now = [100.0]
    window = SignupWindow(2, 60.0, [], clock=lambda: now[0])
    first = window.reserve("192.0.2.1")
    second = window.reserve("192.0.2.1")
    assert first is not None
    assert second is not None
    assert window.reserve("192.0.2.1") is None
    window.release("192.0.2.1", second)
    assert window.reserve("192.0.2.1") is not None
    assert window.reserve("192.0.2.2") is not None  # per address
    now[0] += 61.0
    assert window.reserve("192.0.2.1") is not None


async def test_closed_registration_is_not_advertised_and_unavailable(tmp_path: Path) -> None:
    config = make_config(tmp_path, registration={"open": False})
    async with running_server(config) as server, raw_client(server) as (client, features):
        assert features.find(f"{{{ns.REGISTER_FEATURE}}}register") is None
        get = await client.iq(f"<iq type='get' id='g1'><query xmlns='{ns.REGISTER}'/></iq>")
        set_ = await client.iq(register_iq("henry", PASSWORD))

        assert condition(get) == "service-unavailable"  # XEP-0077 §3.1: no in-band registration here
        assert condition(set_) == "service-unavailable"
        assert not await server.storage.accounts.exists("henry")


async def test_no_registration_before_tls(server: Server) -> None:
    """With TLS required, the plain-text stream offers only STARTTLS (RFC 6120 §5.3.1)."""
    reader, writer = await raw_stream(server)
    client = RawClient(reader, writer)
    try:
        features = await client.open()
        assert features.find(f"{{{ns.REGISTER_FEATURE}}}register") is None
        writer.write(register_iq("ivan", PASSWORD).encode())
        error = await client.next()
        assert error.tag == f"{{{ns.STREAM}}}error"
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    assert not await server.storage.accounts.exists("ivan")


# -- after authentication -------------------------------------------------------------------------------


async def test_a_logged_in_user_is_registered(clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"), plugins=["xep_0077"])

    answer = await alice.plugin["xep_0077"].get_registration(jid=DOMAIN)

    assert answer["register"]["registered"]
    assert answer["register"]["username"] == "alice"


async def test_alice_changes_her_password(server: Server, clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"), plugins=["xep_0077"])

    answer = await alice.plugin["xep_0077"].change_password("a new password", jid=DOMAIN)

    assert answer["type"] == "result"
    assert await can_login(server, "alice", "a new password")
    assert not await can_login(server, "alice", PASSWORD)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ("<username>bob</username><password>hijacked!</password>", "bad-request"),  # someone else
        ("<password>no username</password>", "bad-request"),  # §3.3: incomplete
        ("<username>alice</username><password/>", "bad-request"),  # §3.3: keep the old password
        ("<username>alice</username>", "bad-request"),
        ("<username>alice</username><password>short</password>", "not-acceptable"),
    ],
)
async def test_bad_password_changes_keep_the_password(
    server: Server, clients: Clients, fields: str, expected: str
) -> None:
    await clients.user("alice")
    await clients.user("bob")
    async with raw_client(server) as (client, _features):
        assert await client.login("alice", PASSWORD)
        await client.iq(f"<iq type='set' id='b1'><bind xmlns='{ns.BIND}'/></iq>")
        answer = await client.iq(f"<iq type='set' id='c1'><query xmlns='{ns.REGISTER}'>{fields}</query></iq>")

    assert condition(answer) == expected
    assert await can_login(server, "alice", PASSWORD)
    assert await can_login(server, "bob", PASSWORD)


async def test_alice_cancels_her_account(server: Server, clients: Clients) -> None:
    """XEP-0077 §3.2: result first, then every session ends with <not-authorized/>."""
    errors: list[str] = []
    alice_jid = await clients.user("alice")
    alice = await clients.login(alice_jid, plugins=["xep_0077"])
    await clients.login(
        alice_jid,
        setup=lambda c: c.add_event_handler("stream_error", lambda e: errors.append(e["condition"])),
    )

    answer = await alice.plugin["xep_0077"].cancel_registration(jid=DOMAIN)

    assert answer["type"] == "result"
    await wait_for(lambda: errors == ["not-authorized"])
    await wait_for(lambda: len(server.sessions) == 0)
    assert not await server.storage.accounts.exists("alice")
    assert not await can_login(server, "alice", PASSWORD)


async def test_remove_must_be_alone(server: Server, clients: Clients) -> None:
    """XEP-0077 §3.2 error table: <remove/> with company is a bad request."""
    alice = await clients.login(await clients.user("alice"))
    iq = alice.Iq()
    iq["type"] = "set"
    iq["to"] = DOMAIN
    iq.append(ET.fromstring(f"<query xmlns='{ns.REGISTER}'><remove/><username>alice</username></query>"))

    with pytest.raises(IqError) as error:
        await iq.send()

    assert error.value.iq["error"]["condition"] == "bad-request"
    assert await server.storage.accounts.exists("alice")
