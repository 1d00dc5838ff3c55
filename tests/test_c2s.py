"""Client streams end to end: negotiation, authentication, binding, and every bad input the RFC names."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
import slixmpp
from conftest import PASSWORD, Clients, make_config, raw_stream, read_until, wait_for

from nitro.c2s.session import ClientSession
from nitro.server import Server, running_server
from nitro.xmpp.jid import JID

HEADER = (
    b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams'>"
)


def plain(username: str, password: str) -> bytes:
    token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
    return f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode()


async def opened(server: Server, *, tls: bool = True) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw stream (Direct TLS by default) whose header and features have been exchanged."""
    reader, writer = await raw_stream(server, tls=tls)
    writer.write(HEADER)
    await read_until(reader, b"</stream:features>")
    return reader, writer


async def logged_in(
    server: Server, username: str, resource: str = "raw"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw Direct TLS stream authenticated with PLAIN and bound to `resource`."""
    reader, writer = await opened(server)
    writer.write(plain(username, PASSWORD))
    await read_until(reader, b"<success")
    writer.write(HEADER)
    await read_until(reader, b"</stream:features>")
    writer.write(
        b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        b"<resource>" + resource.encode() + b"</resource></bind></iq>"
    )
    await read_until(reader, b"</iq>")
    return reader, writer


async def stream_error(reader: asyncio.StreamReader, condition: str) -> bytes:
    """Read to the end of the stream and check it carried `<condition/>` as a stream error."""
    data = await read_until(reader, b"</stream:stream>")
    assert b"<stream:error>" in data, data
    assert f'<{condition} xmlns="urn:ietf:params:xml:ns:xmpp-streams"/>'.encode() in data, data
    return data


async def still_serving(clients: Clients) -> None:
    """Another user can still log in and talk to themselves after a misbehaving client."""
    jid = await clients.user(f"witness{len(clients.connected)}")
    client = await clients.login(jid)
    client.send_message(mto=slixmpp.JID(jid), mbody="still here")
    message = await client.wait_until("message", 5)
    assert message["body"] == "still here"


# -- the happy paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
async def test_each_mechanism_logs_in_over_starttls(clients: Clients, mechanism: str) -> None:
    jid = await clients.user("alice")

    def only(client: slixmpp.ClientXMPP) -> None:
        client.plugin["feature_mechanisms"].use_mech = mechanism

    client = await clients.login(jid, setup=only)
    assert str(client.boundjid.bare) == jid
    (session,) = clients.server.sessions
    assert isinstance(session, ClientSession)  # the registry is typed by the protocol modules see
    assert session.mechanism == mechanism
    assert str(session.jid) == str(client.boundjid)


async def test_direct_tls_login(clients: Clients) -> None:
    jid = await clients.user("alice")
    client = await clients.login(jid, direct_tls=True)
    assert client.boundjid.bare == jid


async def test_server_generates_a_resource_when_the_client_names_none(
    server: Server, clients: Clients
) -> None:
    await clients.user("alice")
    reader, writer = await opened(server)
    writer.write(plain("alice", PASSWORD))
    await read_until(reader, b"<success")
    writer.write(HEADER)
    features = await read_until(reader, b"</stream:features>")
    assert b"urn:ietf:params:xml:ns:xmpp-bind" in features
    writer.write(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    reply = await read_until(reader, b"</iq>")
    assert b"<jid>alice@localhost/" in reply
    writer.write(b"</stream:stream>")
    assert b"</stream:stream>" in await read_until(reader, b"</stream:stream>")
    writer.close()


async def test_starttls_is_required_before_anything_else(server: Server) -> None:
    reader, writer = await raw_stream(server)
    writer.write(HEADER)
    features = await read_until(reader, b"</stream:features>")
    assert b"<required/>" in features
    assert b"mechanism" not in features
    writer.write(plain("alice", PASSWORD))
    await stream_error(reader, "policy-violation")
    writer.close()


async def test_plain_is_not_offered_without_tls(tmp_path: Path) -> None:
    config = make_config(tmp_path, c2s={"require_encryption": False})
    async with running_server(config) as server:
        reader, writer = await raw_stream(server)
        writer.write(HEADER)
        features = await read_until(reader, b"</stream:features>")
        assert b"SCRAM-SHA-256" in features
        assert b">PLAIN<" not in features
        writer.close()


async def test_whitespace_keepalives_are_accepted(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    reader, writer = await logged_in(server, "alice")
    writer.write(b"   \n  ")
    writer.write(b"<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = await read_until(reader, b'id="p1"')
    assert b'type="result"' in reply
    writer.close()


# -- authentication failures ---------------------------------------------------------------------------


async def test_wrong_password_is_not_authorized_and_stream_survives(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    reader, writer = await opened(server)
    writer.write(plain("alice", "wrong"))
    assert b"<not-authorized/>" in await read_until(reader, b"</failure>")
    writer.write(plain("alice", PASSWORD))
    assert b"<success" in await read_until(reader, b"<success")
    writer.close()


async def test_too_many_failures_close_the_stream(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    reader, writer = await opened(server)
    for _ in range(server.config.auth.max_failures_per_stream - 1):
        writer.write(plain("alice", "wrong"))
        await read_until(reader, b"</failure>")
    writer.write(plain("alice", "wrong"))
    await stream_error(reader, "not-authorized")
    writer.close()


async def test_repeated_failures_from_one_address_are_throttled(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    for _ in range(server.config.auth.throttle_failures):
        reader, writer = await opened(server)
        writer.write(plain("alice", "wrong"))
        await read_until(reader, b"</failure>")
        writer.close()
    reader, writer = await opened(server)
    writer.write(plain("alice", PASSWORD))  # the right password, but this address is cooling down
    assert b"<temporary-auth-failure/>" in await read_until(reader, b"</failure>")
    writer.close()


async def test_garbage_base64_is_incorrect_encoding(server: Server) -> None:
    reader, writer = await opened(server)
    writer.write(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>!!notbase64!!</auth>")
    assert b"<incorrect-encoding/>" in await read_until(reader, b"</failure>")
    writer.close()


async def test_unknown_mechanism_is_invalid_mechanism(server: Server) -> None:
    reader, writer = await opened(server)
    writer.write(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='DIGEST-MD5'/>")
    assert b"<invalid-mechanism/>" in await read_until(reader, b"</failure>")
    writer.close()


async def test_scram_with_wrong_password_fails(clients: Clients) -> None:
    jid = await clients.user("alice")
    with pytest.raises(AssertionError, match="authentication failed"):
        await clients.login(jid, "not the password")


async def test_unknown_user_fails_like_a_wrong_password(clients: Clients) -> None:
    with pytest.raises(AssertionError, match="authentication failed"):
        await clients.login("nobody@localhost")


# -- bad XML and bad stanzas -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "condition"),
    [
        (b"<message><body>unclosed</message>", "not-well-formed"),
        (b"<message to='a@localhost'>\xff\xfe</message>", "not-well-formed"),
        (b"<!-- a comment -->", "restricted-xml"),
        (b"<?php evil() ?>", "restricted-xml"),
        (b"<message><body>&unknown;</body></message>", "restricted-xml"),
    ],
)
async def test_bad_xml_gets_the_stream_error(
    server: Server, clients: Clients, payload: bytes, condition: str
) -> None:
    reader, writer = await opened(server)
    writer.write(payload)
    await stream_error(reader, condition)
    writer.close()
    await still_serving(clients)


@pytest.mark.parametrize(
    "prolog",
    [
        b"<!DOCTYPE stream [<!ENTITY a 'x'>]>",
        b"<!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;'>"
        b"<!ENTITY lol3 '&lol2;&lol2;&lol2;&lol2;&lol2;'>]>",
        b"<!DOCTYPE foo [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>",
    ],
    ids=["dtd", "entity-bomb", "external-entity"],
)
async def test_dtds_are_restricted_xml(server: Server, clients: Clients, prolog: bytes) -> None:
    reader, writer = await raw_stream(server)
    writer.write(b"<?xml version='1.0'?>" + prolog + HEADER.split(b"?>", 1)[1])
    data = await stream_error(reader, "restricted-xml")
    assert b"root:" not in data  # nothing of /etc/passwd
    writer.close()
    await still_serving(clients)


async def test_a_nul_byte_in_the_xml_declaration_is_not_well_formed_at_once(
    server: Server, clients: Clients
) -> None:
    """Issue 11 item 6: the server answers at once, not at the size limit or the negotiation timeout."""
    reader, writer = await raw_stream(server)
    writer.write(b"<?xml version='1.0'\x00?>")  # and nothing more: the stream header never comes
    await stream_error(reader, "not-well-formed")  # read_until's 5 s, far below the 20 s negotiation timeout
    writer.close()
    await still_serving(clients)


async def test_oversized_stanza_is_a_policy_violation(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    reader, writer = await logged_in(server, "alice")
    writer.write(b"<message to='alice@localhost'><body>")
    chunk = b"x" * 65536
    try:
        for _ in range(160):  # 10 MiB, but the server stops reading long before
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), 5)
    except (ConnectionError, TimeoutError):
        pass
    await stream_error(reader, "policy-violation")
    writer.close()
    await still_serving(clients)


async def test_stanza_before_authentication_is_not_authorized(server: Server) -> None:
    reader, writer = await opened(server)
    writer.write(b"<message to='bob@localhost'><body>hi</body></message>")
    await stream_error(reader, "not-authorized")
    writer.close()


async def test_wrong_stream_namespace_is_invalid_namespace(server: Server) -> None:
    reader, writer = await raw_stream(server)
    writer.write(
        b"<stream:stream to='localhost' version='1.0' xmlns='jabber:client' xmlns:stream='urn:wrong'>"
    )
    await stream_error(reader, "invalid-namespace")
    writer.close()


async def test_unknown_host_is_host_unknown(server: Server) -> None:
    reader, writer = await raw_stream(server)
    writer.write(HEADER.replace(b"to='localhost'", b"to='example.org'"))
    await stream_error(reader, "host-unknown")
    writer.close()


async def test_binding_a_second_resource_is_not_allowed(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    reader, writer = await logged_in(server, "alice")
    writer.write(
        b"<iq type='set' id='b2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        b"<resource>second</resource></bind></iq>"
    )
    reply = await read_until(reader, b"</iq>")
    assert b'type="error"' in reply
    assert b"<not-allowed" in reply
    writer.close()


async def test_same_resource_replaces_the_old_session_with_conflict(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    old_reader, old_writer = await logged_in(server, "alice", "desk")
    _reader, writer = await logged_in(server, "alice", "desk")
    await stream_error(old_reader, "conflict")
    old_writer.close()
    writer.close()


async def test_foreign_from_is_invalid_from(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    reader, writer = await logged_in(server, "alice")
    writer.write(
        b"<iq type='set' id='r1' from='bob@localhost/x'><query xmlns='jabber:iq:roster'>"
        b"<item jid='eve@localhost'/></query></iq>"
    )
    await stream_error(reader, "invalid-from")
    writer.close()


@pytest.mark.parametrize(
    "to",
    ["bad user@localhost", "a@b@localhost", "x" * 1024 + "@localhost", "alice@localhost/" + "r" * 1024],
)
async def test_bad_jid_gets_jid_malformed(server: Server, clients: Clients, to: str) -> None:
    await clients.user("alice")
    reader, writer = await logged_in(server, "alice")
    writer.write(f"<message to='{to}' id='m1'><body>hi</body></message>".encode())
    reply = await read_until(reader, b"</message>")
    assert b'type="error"' in reply
    assert b"<jid-malformed" in reply
    writer.close()


async def test_unknown_iq_namespace_is_service_unavailable(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    reader, writer = await logged_in(server, "alice")
    writer.write(b"<iq type='get' id='q1' to='localhost'><query xmlns='urn:example:nothing'/></iq>")
    reply = await read_until(reader, b"</iq>")
    assert b"<service-unavailable" in reply
    writer.close()


# -- silence and abrupt ends -----------------------------------------------------------------------------


async def test_silent_client_times_out_during_negotiation(tmp_path: Path) -> None:
    config = make_config(tmp_path, c2s={"negotiation_timeout": 0.5})
    async with running_server(config) as server:
        reader, writer = await raw_stream(server)
        writer.write(HEADER)
        await stream_error(reader, "connection-timeout")
        writer.close()


async def test_idle_client_is_pinged_then_dropped(tmp_path: Path) -> None:
    config = make_config(tmp_path, c2s={"idle_ping_after": 0.3, "ping_timeout": 0.3})
    async with running_server(config) as server:
        pool = Clients(server)
        await pool.user("alice")
        reader, writer = await logged_in(server, "alice")
        ping = await read_until(reader, b"urn:xmpp:ping")
        assert b'type="get"' in ping
        await stream_error(reader, "connection-timeout")
        writer.close()
        await wait_for(lambda: len(server.sessions) == 0)


async def test_answered_pings_keep_the_session(tmp_path: Path) -> None:
    config = make_config(tmp_path, c2s={"idle_ping_after": 0.3, "ping_timeout": 0.5})
    async with running_server(config) as server:
        pool = Clients(server)
        jid = await pool.user("alice")
        client = await pool.login(jid)  # slixmpp answers XEP-0199 pings
        await asyncio.sleep(1.5)
        assert len(server.sessions) == 1
        client.send_message(mto=slixmpp.JID(jid), mbody="alive")
        assert (await client.wait_until("message", 5))["body"] == "alive"
        await pool.close_all()


async def test_connection_closed_mid_stanza_unbinds_and_others_keep_working(
    server: Server, clients: Clients
) -> None:
    await clients.user("alice")
    _reader, writer = await logged_in(server, "alice")
    assert len(server.sessions) == 1
    writer.write(b"<message to='alice@localhost'><body>half a mess")
    await writer.drain()
    writer.transport.abort()
    await wait_for(lambda: len(server.sessions) == 0)
    await still_serving(clients)


async def test_server_shutdown_sends_system_shutdown(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_server(config) as server:
        reader, writer = await opened(server)
    await stream_error(reader, "system-shutdown")
    writer.close()


async def test_unknown_nonza_is_unsupported_stanza_type(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    reader, writer = await logged_in(server, "alice")
    writer.write(b"<frobnicate xmlns='urn:example:nothing'/>")
    await stream_error(reader, "unsupported-stanza-type")
    writer.close()


async def test_binding_past_the_resource_limit_is_a_resource_constraint(tmp_path: Path) -> None:
    config = make_config(tmp_path, c2s={"max_resources_per_account": 2})
    async with running_server(config) as server:
        pool = Clients(server)
        await pool.user("alice")
        first = await logged_in(server, "alice", "one")
        second = await logged_in(server, "alice", "two")
        reader, writer = await opened(server)
        writer.write(plain("alice", PASSWORD))
        await read_until(reader, b"<success")
        writer.write(HEADER)
        await read_until(reader, b"</stream:features>")
        writer.write(
            b"<iq type='set' id='b3'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            b"<resource>three</resource></bind></iq>"
        )
        refused = await read_until(reader, b"</iq>")
        assert b'type="error"' in refused
        assert b"<resource-constraint" in refused
        assert b'type="wait"' in refused
        assert len(server.sessions.sessions_of(JID.parse("alice@localhost"))) == 2
        # the same resource again is a replacement, not one more: always allowed (RFC 6120 §7.7.2.2)
        writer.write(
            b"<iq type='set' id='b4'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            b"<resource>two</resource></bind></iq>"
        )
        replaced = await read_until(reader, b"</iq>")
        assert b'type="result"' in replaced
        assert b"<conflict" in await read_until(second[0], b"</stream:stream>")
        for _reader, stream in (first, second, (reader, writer)):
            stream.close()
        await pool.close_all()
