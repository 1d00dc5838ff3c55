"""The load generator (integration/loadgen): its SCRAM math, stream cutting, provisioning, and a real run."""

from __future__ import annotations

import array
import asyncio
import base64
import time
from pathlib import Path

import pytest

from integration.loadgen.accounts import PASSWORD, contacts
from integration.loadgen.client import Client, Ended, LoggedIn, LoginPlan, Stanza
from integration.loadgen.provision import provision_bulk, provision_storage
from integration.loadgen.scram import HashName, ScramClient, ScramError, plain_message
from integration.loadgen.worker import (
    ChatReport,
    ChatStep,
    LoadgenError,
    Login,
    LoginReport,
    Logout,
    LogoutReport,
    Target,
    WorkerPool,
    check_loopback,
)
from integration.loadgen.xmlsplit import Element, Splitter, StreamClosed, StreamOpened
from nitro.server import Server
from nitro.storage.sql import open_sql_storage
from nitro.xmpp.sasl.credentials import derive_credential
from nitro.xmpp.sasl.scram import ScramServer

HASHES: list[HashName] = ["SHA-1", "SHA-256"]


# --- SCRAM against Nitro's server side and the RFC vectors ---------------------------------------------


@pytest.mark.parametrize(
    ("hash_name", "client_nonce", "server_nonce", "salt", "proof", "signature"),
    [
        (  # RFC 5802 §5
            "SHA-1",
            "fyko+d2lbbFgONRv9qkxdawL",
            "3rfcNHYJY1ZVvWVs7j",
            "QSXCR+Q6sek8bf92",
            "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            "rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        ),
        (  # RFC 7677 §3
            "SHA-256",
            "rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "W22ZaJ0SNY7soEsUEjb6gQ==",
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        ),
    ],
)
def test_scram_client_matches_the_rfc_vectors_through_nitros_server(
    hash_name: HashName, client_nonce: str, server_nonce: str, salt: str, proof: str, signature: str
) -> None:
    client = ScramClient(hash_name, "user", "pencil", nonce=client_nonce)
    server = ScramServer(hash_name, nonce_factory=lambda: server_nonce)
    credential = derive_credential("pencil", hash_name, salt=base64.b64decode(salt), iterations=4096)

    assert server.client_first(client.client_first()) == "user"
    final = client.client_final(server.server_first(credential))
    assert final.endswith(b",p=" + proof.encode())
    server_final = server.client_final(final)
    assert server_final == b"v=" + signature.encode()
    client.verify(server_final)


@pytest.mark.parametrize("hash_name", HASHES)
def test_scram_client_rejects_a_server_that_does_not_know_the_password(hash_name: HashName) -> None:
    client = ScramClient(hash_name, "juliet", "pencil")
    server = ScramServer(hash_name)
    server.client_first(client.client_first())
    final = client.client_final(server.server_first(derive_credential("pencil", hash_name, iterations=16)))
    server.client_final(final)
    with pytest.raises(ScramError):
        client.verify(b"v=" + base64.b64encode(b"\0" * (20 if hash_name == "SHA-1" else 32)))


def test_scram_client_refuses_a_nonce_that_does_not_extend_its_own() -> None:
    client = ScramClient("SHA-1", "juliet", "pencil", nonce="abc")
    with pytest.raises(ScramError):
        client.client_final(b"r=xyz123,s=QSXCR+Q6sek8bf92,i=4096")


def test_plain_message() -> None:
    assert plain_message("juliet", "pencil") == b"\0juliet\0pencil"


# --- the stream, sans-IO --------------------------------------------------------------------------------

STREAM = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' id='a>b' from='localhost' version='1.0'>"
    b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
    b"<mechanism>PLAIN</mechanism></mechanisms></stream:features>\n "
    b"<message to=\"x\" note='1 > 0'><body>a &lt;b&gt; c</body><x><x/></x></message><presence/>"
    b"</stream:stream>"
)


def test_splitter_cuts_top_level_elements_whatever_the_chunking() -> None:
    whole = Splitter().feed(STREAM)
    assert [type(event) for event in whole] == [StreamOpened, Element, Element, Element, StreamClosed]
    assert whole[2] == Element(
        b"message", b"<message to=\"x\" note='1 > 0'><body>a &lt;b&gt; c</body><x><x/></x></message>"
    )
    for size in (1, 2, 5, 64):
        splitter = Splitter()
        events = []
        for offset in range(0, len(STREAM), size):
            events += splitter.feed(STREAM[offset : offset + size])
        assert events == whole


def test_client_logs_in_with_plain_then_hands_over_stanzas() -> None:
    client = Client(LoginPlan("localhost", "juliet", "pencil", mechanism="PLAIN", roster=True, presence=True))
    client.start()
    assert b"<stream:stream" in client.data_to_send()

    header = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='1'>"
    features = (
        b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
        b"<mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms></stream:features>"
    )
    assert client.receive_data(header + features) == []
    auth = client.data_to_send()
    assert b"mechanism='PLAIN'" in auth
    assert base64.b64encode(b"\0juliet\0pencil") in auth

    client.receive_data(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
    assert b"<stream:stream" in client.data_to_send()  # restart (RFC 6120 §6.4.6)
    client.receive_data(
        header + b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
    )
    assert b"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>" in client.data_to_send()
    client.receive_data(b"<iq type='result' id='bind'><bind><jid>juliet@localhost/load</jid></bind></iq>")
    assert b"jabber:iq:roster" in client.data_to_send()

    events = client.receive_data(b"<iq type='result' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
    assert events == [LoggedIn("juliet@localhost/load")]
    assert client.data_to_send() == b"<presence/>"

    message = b"<message from='romeo@localhost/x' type='chat'><body>hi</body></message>"
    assert client.receive_data(message) == [Stanza(b"message", message)]
    client.receive_data(b"<iq type='get' id='p1' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert client.data_to_send() == b"<iq type='result' id='p1' to='localhost'/>"


def test_client_reports_a_failed_authentication_as_the_servers_answer() -> None:
    client = Client(LoginPlan("localhost", "juliet", "wrong", mechanism="SCRAM-SHA-256"))
    client.start()
    client.receive_data(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
        b"<mechanism>SCRAM-SHA-256</mechanism></mechanisms></stream:features>"
    )
    events = client.receive_data(
        b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>"
    )
    assert events == [Ended("authentication failed: <not-authorized/>", "server")]


# --- accounts -------------------------------------------------------------------------------------------


def test_contacts_are_mutual_ring_neighbours() -> None:
    for users, size in ((100, 20), (101, 50), (10, 20), (2, 1)):
        for index in range(users):
            mine = contacts(index, users, size)
            assert index not in mine
            assert len(mine) == min(users - 1, size - size % 2 if size < users - 1 else users - 1)
            assert all(index in contacts(other, users, size) for other in mine)


async def test_bulk_provisioning_writes_what_the_storage_api_writes(tmp_path: Path) -> None:
    names = [f"u{i:05d}" for i in range(6)]
    bulk, api = f"sqlite+aiosqlite:///{tmp_path}/bulk.db", f"sqlite+aiosqlite:///{tmp_path}/api.db"
    await provision_bulk(bulk, "localhost", names, roster_size=2, iterations=16)
    async with open_sql_storage(api) as storage:
        await provision_storage(storage, "localhost", names, roster_size=2, iterations=16)
    async with open_sql_storage(bulk) as by_bulk, open_sql_storage(api) as by_api:
        for name in names:
            assert await by_bulk.accounts.get_credentials(name) == await by_api.accounts.get_credentials(name)
            assert await by_bulk.rosters.get(name) == await by_api.rosters.get(name)


def test_the_load_generator_refuses_targets_off_this_machine() -> None:
    check_loopback("127.0.0.1")
    with pytest.raises(LoadgenError, match="non-loopback"):
        check_loopback("192.0.2.1")  # TEST-NET-1 (RFC 5737)


# --- a real run against Nitro ---------------------------------------------------------------------------


async def test_twenty_clients_log_in_and_every_chat_message_arrives(server: Server) -> None:
    config = server.config
    names = [f"u{i:05d}" for i in range(20)]
    await provision_storage(server.storage, config.server.domain, names, roster_size=4, iterations=4096)
    target = Target(
        "127.0.0.1",
        config.c2s.port,
        config.server.domain,
        PASSWORD,
        mechanism="SCRAM-SHA-256",
        starttls=True,  # the test config requires encryption
        cafile=str(config.path(config.tls.cert)),
    )

    def run() -> tuple[list[LoginReport], list[ChatReport], list[LogoutReport]]:
        with WorkerPool(target, range(20), workers=2) as pool:  # two processes: reports are merged
            logins = pool.request(Login(timeout=30), timeout=60)
            start = time.monotonic() + 0.2
            chats = pool.request([ChatStep(0, 25.0, start, 2.0, 5.0) for _ in pool.shares], timeout=60)
            logouts = pool.request(Logout(timeout=5), timeout=30)
        return (
            [r for r in logins if isinstance(r, LoginReport)],
            [r for r in chats if isinstance(r, ChatReport)],
            [r for r in logouts if isinstance(r, LogoutReport)],
        )

    logins, chats, logouts = await asyncio.to_thread(run)

    assert sum(r.ok for r in logins) == 20
    assert all(not r.errors for r in logins)
    sent = sum(r.sent for r in chats)
    assert sent > 0
    assert sum(r.skipped for r in chats) == 0
    delivered = sum(len(array.array("q", r.latencies_ns)) for r in chats)
    assert delivered == sent  # every message, exactly once
    assert all(r.errors == 0 for r in chats)
    assert sum(r.closed for r in logouts) == 20
