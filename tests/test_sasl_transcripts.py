"""SASL (RFC 6120 §6) and in-band registration before it (XEP-0077) as transcripts without sockets: each
mechanism's exchange (SCRAM with a client written from RFC 5802 here), the restart after success, and every
failure the RFC names.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import pytest
from conftest import DOMAIN, PASSWORD
from lxml import etree
from transcript import PEER, Harness, Transcript, transcript_config, transcript_server

from nitro.xmpp import ns
from nitro.xmpp.jid import JID

SCRAM_HASHES: dict[str, Literal["sha1", "sha256"]] = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}


class ScramClient:
    """The client side of SCRAM (RFC 5802, RFC 7677), written from the RFC for the tests: ASCII passwords
    only (SASLprep is then the identity), no channel binding ('n,,')."""

    def __init__(self, hash_name: Literal["sha1", "sha256"], username: str, password: str) -> None:
        self.hash_name = hash_name
        self.password = password.encode()
        self.nonce = secrets.token_urlsafe(18)
        self.first_bare = f"n={username},r={self.nonce}"
        self._auth_message = b""
        self._salted = b""

    def first(self) -> str:
        """client-first-message, base64 as it goes in `<auth/>`."""
        return base64.b64encode(f"n,,{self.first_bare}".encode()).decode()

    def final(self, challenge: str, *, tamper: bool = False) -> str:
        """client-final-message for the server-first-message in `challenge` (base64)."""
        server_first = base64.b64decode(challenge)
        fields = dict(part.split("=", 1) for part in server_first.decode().split(","))
        assert fields["r"].startswith(self.nonce)
        self._salted = hashlib.pbkdf2_hmac(
            self.hash_name, self.password, base64.b64decode(fields["s"]), int(fields["i"])
        )
        without_proof = f"c=biws,r={fields['r']}"
        self._auth_message = f"{self.first_bare},".encode() + server_first + f",{without_proof}".encode()
        client_key = self._hmac(self._salted, b"Client Key")
        signature = self._hmac(hashlib.new(self.hash_name, client_key).digest(), self._auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        if tamper:
            proof = bytes([proof[0] ^ 1]) + proof[1:]
        return base64.b64encode(f"{without_proof},p={base64.b64encode(proof).decode()}".encode()).decode()

    def server_signature_ok(self, success: str) -> bool:
        """Whether the server-final-message in `<success/>` proves the server knew the password."""
        server_key = self._hmac(self._salted, b"Server Key")
        expected = base64.b64encode(self._hmac(server_key, self._auth_message)).decode()
        return base64.b64decode(success).decode() == f"v={expected}"

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self.hash_name).digest()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with transcript_server(transcript_config(tmp_path)) as running:
        yield running


def plain_token(username: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{username}\0{password}".encode()).decode()


def auth(mechanism: str, text: str = "") -> str:
    return f"<auth xmlns='{ns.SASL}' mechanism='{mechanism}'>{text}</auth>"


def response(text: str) -> str:
    return f"<response xmlns='{ns.SASL}'>{text}</response>"


async def scram_challenge(t: Transcript, mechanism: str, username: str, password: str) -> ScramClient:
    """client-first-message in `<auth/>`; the server-first-message comes back as a challenge (RFC 5802 §5)."""
    scram = ScramClient(SCRAM_HASHES[mechanism], username, password)
    await t.client(auth(mechanism, scram.first()))
    challenge = t.expect("challenge", ns.SASL)
    await t.client(response(scram.final(challenge.text or "")))
    return scram


def authenticated_features(features: etree._Element) -> None:
    """§6.4.6, §7.2: after SASL the features offer binding and no mechanisms."""
    assert features.find(f"{{{ns.BIND}}}bind") is not None
    assert features.find(f"{{{ns.SASL}}}mechanisms") is None


# -- success (§6.4.6) ---------------------------------------------------------------------------------------


async def test_plain_success_restarts_the_stream(harness: Harness) -> None:
    await harness.user("alice")
    t = harness.connect()
    await t.open()
    await t.client(auth("PLAIN", plain_token("alice", PASSWORD)))
    assert t.expect("success", ns.SASL).text is None  # PLAIN has no additional data
    t.expect_plain("restart")
    t.expect_nothing()
    features = await t.open()  # §6.4.6: the client opens a new stream over the same connection
    authenticated_features(features)
    assert t.stream.negotiation.mechanism == "PLAIN"
    assert t.stream.negotiation.jid == JID.make("alice", DOMAIN)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
async def test_scram_challenge_response_success(harness: Harness, mechanism: str) -> None:
    """RFC 5802 §5 (and RFC 7677): the server-final-message travels in `<success/>` (§6.3.10) and proves the
    server knew the password."""
    await harness.user("alice")
    t = harness.connect()
    await t.open()
    scram = await scram_challenge(t, mechanism, "alice", PASSWORD)
    success = t.expect("success", ns.SASL)
    assert scram.server_signature_ok(success.text or "")
    t.expect_plain("restart")
    authenticated_features(await t.open())
    await t.bind("desk")
    session = t.session
    assert session is not None
    assert session.mechanism == mechanism


async def test_scram_is_offered_on_a_plain_stream_where_plain_is_not(tmp_path: Path) -> None:
    """RFC 4616 §6: PLAIN only over TLS; SCRAM works without it (when TLS is not required)."""
    config = transcript_config(tmp_path, c2s={"require_encryption": False})
    async with transcript_server(config) as harness:
        await harness.user("alice")
        t = harness.connect(encrypted=False)
        await t.open()
        await t.client(auth("PLAIN", plain_token("alice", PASSWORD)))
        t.expect_error("invalid-mechanism")
        scram = await scram_challenge(t, "SCRAM-SHA-256", "alice", PASSWORD)
        assert scram.server_signature_ok(t.expect("success", ns.SASL).text or "")


async def test_an_auth_without_initial_response_gets_an_empty_challenge(harness: Harness) -> None:
    """§6.4.2: no initial response: the server sends an empty challenge ("=") and the client responds."""
    await harness.user("alice")
    t = harness.connect()
    await t.open()
    await t.client(auth("PLAIN"))
    assert t.expect("challenge", ns.SASL).text == "="
    await t.client(response(plain_token("alice", PASSWORD)))
    t.expect("success", ns.SASL)
    t.expect_plain("restart")


# -- failures (§6.4.5, §6.5) -------------------------------------------------------------------------------


async def test_a_wrong_password_is_not_authorized_and_the_stream_goes_on(harness: Harness) -> None:
    """§6.5.10; the client may try again on the same stream (§6.4.5)."""
    await harness.user("alice")
    t = harness.connect()
    await t.open()
    await t.client(auth("PLAIN", plain_token("alice", "wrong")))
    t.expect_error("not-authorized")
    t.expect_nothing()
    await t.client(auth("PLAIN", plain_token("alice", PASSWORD)))
    t.expect("success", ns.SASL)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
@pytest.mark.parametrize("who", ["wrong-password", "unknown-user"])
async def test_scram_fails_only_at_the_proof(harness: Harness, mechanism: str, who: str) -> None:
    """RFC 5802 §9: an unknown user gets a normal server-first-message and fails like a wrong password."""
    await harness.user("alice")
    t = harness.connect()
    await t.open()
    username, password = ("alice", "wrong") if who == "wrong-password" else ("nobody", PASSWORD)
    await scram_challenge(t, mechanism, username, password)
    t.expect_error("not-authorized")
    t.expect_nothing()
    assert t.stream.open


async def test_a_tampered_scram_proof_is_not_authorized(harness: Harness) -> None:
    await harness.user("alice")
    t = harness.connect()
    await t.open()
    scram = ScramClient("sha256", "alice", PASSWORD)
    await t.client(auth("SCRAM-SHA-256", scram.first()))
    challenge = t.expect("challenge", ns.SASL).text or ""
    await t.client(response(scram.final(challenge, tamper=True)))
    t.expect_error("not-authorized")


@pytest.mark.parametrize("mechanism", ["DIGEST-MD5", "EXTERNAL", ""])
async def test_a_mechanism_not_offered_is_invalid_mechanism(harness: Harness, mechanism: str) -> None:
    """§6.5.6; the stream goes on."""
    t = harness.connect()
    await t.open()
    await t.client(auth(mechanism))
    t.expect_error("invalid-mechanism")
    t.expect_nothing()
    assert t.stream.open


async def test_garbage_base64_is_incorrect_encoding(harness: Harness) -> None:
    """§6.5.5 (RFC 4648 §4 base64 only)."""
    t = harness.connect()
    await t.open()
    await t.client(auth("PLAIN", "!!notbase64!!"))
    t.expect_error("incorrect-encoding")


async def test_an_authzid_naming_someone_else_is_invalid_authzid(harness: Harness) -> None:
    """§6.5.7, §6.3.8: the authzid may only name the account itself."""
    await harness.user("alice")
    t = harness.connect()
    await t.open()
    await t.client(auth("PLAIN", plain_token("alice", PASSWORD, authzid="bob@localhost")))
    t.expect_error("invalid-authzid")
    await t.client(auth("PLAIN", plain_token("alice", PASSWORD, authzid="alice@localhost")))
    t.expect("success", ns.SASL)


async def test_abort_is_answered_with_aborted_and_a_new_exchange_may_start(harness: Harness) -> None:
    """§6.4.4: `<abort/>` during an exchange; the server answers `<failure><aborted/></failure>`."""
    await harness.user("alice")
    t = harness.connect()
    await t.open()
    scram = ScramClient("sha256", "alice", PASSWORD)
    await t.client(auth("SCRAM-SHA-256", scram.first()))
    t.expect("challenge", ns.SASL)
    await t.client(f"<abort xmlns='{ns.SASL}'/>")
    t.expect_error("aborted")
    t.expect_nothing()
    await t.client(auth("PLAIN", plain_token("alice", PASSWORD)))
    t.expect("success", ns.SASL)


async def test_too_many_failures_close_the_stream(harness: Harness) -> None:
    """§6.4.5: the server may limit retries; the last failure is sent, then `<not-authorized/>` closes."""
    await harness.user("alice")
    t = harness.connect()
    await t.open()
    for _ in range(harness.server.config.auth.max_failures_per_stream - 1):
        await t.client(auth("PLAIN", plain_token("alice", "wrong")))
        t.expect_error("not-authorized")
    await t.client(auth("PLAIN", plain_token("alice", "wrong")))
    t.expect_error("not-authorized")
    t.expect_stream_error("not-authorized")
    t.expect_nothing()
    assert not t.stream.open


async def test_repeated_failures_from_one_address_are_throttled(harness: Harness) -> None:
    """§6.5.12 temporary-auth-failure: the address cools down, even with the right password; other
    addresses are not affected."""
    await harness.user("alice")
    for _ in range(harness.server.config.auth.throttle_failures):
        t = harness.connect()
        await t.open()
        await t.client(auth("PLAIN", plain_token("alice", "wrong")))
        t.expect_error("not-authorized")
    t = harness.connect(peer_host=PEER)
    await t.open()
    await t.client(auth("PLAIN", plain_token("alice", PASSWORD)))
    t.expect_error("temporary-auth-failure")
    other = harness.connect(peer_host="198.51.100.9")
    await other.open()
    await other.client(auth("PLAIN", plain_token("alice", PASSWORD)))
    other.expect("success", ns.SASL)


async def test_a_second_authentication_after_success_is_a_policy_violation(harness: Harness) -> None:
    """§6.4.6: the stream is authenticated; SASL is not offered again and may not be started again."""
    await harness.user("alice")
    t = harness.connect()
    await t.login("alice")
    await t.client(auth("PLAIN", plain_token("alice", PASSWORD)))
    t.expect_stream_error("policy-violation")


async def test_an_error_after_the_restart_comes_with_a_new_header(harness: Harness) -> None:
    """§6.4.6: after `<success/>` the old stream is gone and ours is not open yet: anything but a new header
    is refused, and the error comes inside a header of ours (§4.9.1.2), as after a fresh connection."""
    await harness.user("alice")
    t = harness.connect()
    await t.open()
    await t.client(auth("PLAIN", plain_token("alice", PASSWORD)))
    t.expect("success", ns.SASL)
    t.expect_plain("restart")
    await t.client(f"<iq type='set' id='b1'><bind xmlns='{ns.BIND}'/></iq>")
    assert t.expect_open().id is None
    t.expect_stream_error("invalid-namespace")  # the parser wanted a stream header
    t.expect_nothing()


async def test_silence_after_the_restart_times_out_inside_a_new_header(harness: Harness) -> None:
    """§4.9.3.4 after §6.4.6: a client that never opens the new stream."""
    await harness.user("alice")
    t = harness.connect()
    await t.open()
    await t.client(auth("PLAIN", plain_token("alice", PASSWORD)))
    t.expect("success", ns.SASL)
    t.expect_plain("restart")
    t.stream.negotiation.negotiation_deadline = time.monotonic() - 1
    assert not await t.tick()
    t.expect_open()
    t.expect_stream_error("connection-timeout")


# -- in-band registration before authentication (XEP-0077 §3.1) ---------------------------------------------


async def test_registration_before_authentication_gives_the_form(harness: Harness) -> None:
    """XEP-0077 §3.1: the registration fields (and a data form, §6) before login; the stream goes on."""
    t = harness.connect()
    features = await t.open()
    assert features.find(f"{{{ns.REGISTER_FEATURE}}}register") is not None
    await t.client(f"<iq type='get' id='g1'><query xmlns='{ns.REGISTER}'/></iq>")
    answer = t.expect("iq")
    assert (answer.get("type"), answer.get("id")) == ("result", "g1")
    query = answer.find(f"{{{ns.REGISTER}}}query")
    assert query is not None
    assert query.find(f"{{{ns.REGISTER}}}username") is not None
    assert query.find(f"{{{ns.REGISTER}}}password") is not None
    assert query.find(f"{{{ns.DATA_FORMS}}}x") is not None
    t.expect_nothing()
    assert t.stream.open


async def test_registration_then_login_on_the_same_stream(harness: Harness) -> None:
    """XEP-0077 §3.1.1: after registering, the client authenticates on the same stream; a second
    registration on it is refused."""
    t = harness.connect()
    await t.open()
    await t.client(
        f"<iq type='set' id='r1'><query xmlns='{ns.REGISTER}'>"
        f"<username>carol</username><password>{PASSWORD}</password></query></iq>"
    )
    assert t.expect("iq").get("type") == "result"
    await t.client(
        f"<iq type='set' id='r2'><query xmlns='{ns.REGISTER}'>"
        f"<username>carol2</username><password>{PASSWORD}</password></query></iq>"
    )
    t.expect_error("not-acceptable")
    await t.client(auth("PLAIN", plain_token("carol", PASSWORD)))
    t.expect("success", ns.SASL)
    assert await harness.server.storage.accounts.exists("carol")
    assert not await harness.server.storage.accounts.exists("carol2")


async def test_an_unknown_iq_before_authentication_is_not_authorized(harness: Harness) -> None:
    """§4.9.3.12: before login only in-band registration is spoken."""
    t = harness.connect()
    await t.open()
    await t.client("<iq type='get' id='v1' to='localhost'><query xmlns='jabber:iq:version'/></iq>")
    t.expect_stream_error("not-authorized")


async def test_cancelling_a_registration_before_login_is_unexpected(harness: Harness) -> None:
    """XEP-0077 §3.2: there is no account to cancel before authentication; the stream goes on."""
    t = harness.connect()
    await t.open()
    await t.client(f"<iq type='set' id='u1'><query xmlns='{ns.REGISTER}'><remove/></query></iq>")
    assert t.expect_error("unexpected-request").get("id") == "u1"
    assert t.stream.open


async def test_closed_registration_is_not_offered_and_unavailable(tmp_path: Path) -> None:
    """XEP-0077 §3.1: no in-band registration here: no feature, `<service-unavailable/>`."""
    async with transcript_server(transcript_config(tmp_path, registration={"open": False})) as harness:
        t = harness.connect()
        features = await t.open()
        assert features.find(f"{{{ns.REGISTER_FEATURE}}}register") is None
        await t.client(f"<iq type='get' id='g1'><query xmlns='{ns.REGISTER}'/></iq>")
        t.expect_error("service-unavailable")
        assert t.stream.open
