"""SASL mechanisms as transcripts: RFC 5802/7677 test vectors, slixmpp's client, and hostile input."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from slixmpp.util.sasl.mechanisms import SCRAM

from nitro.xmpp.sasl import SaslFailure, b64decode_strict, b64encode
from nitro.xmpp.sasl.credentials import (
    HashName,
    ScramCredential,
    derive_all,
    derive_credential,
    verify_password,
)
from nitro.xmpp.sasl.plain import parse_plain
from nitro.xmpp.sasl.scram import ScramServer

HASHES: list[HashName] = ["SHA-1", "SHA-256"]


def fixed(nonce: str) -> Callable[[], str]:
    return lambda: nonce


def slixmpp_client(
    hash_name: HashName, username: str, password: str, *, authzid: str = "", binding_proposed: bool = True
) -> SCRAM:
    """slixmpp's client side; binding_proposed=False makes it send the "y" flag."""
    return SCRAM(
        f"SCRAM-{hash_name}",
        {
            "username": username.encode(),
            "password": password.encode(),
            "authzid": authzid.encode(),
            "channel_binding": b"",
        },
        {"encrypted": True, "unencrypted_scram": False, "binding_proposed": binding_proposed},
    )


def run_exchange(server: ScramServer, client: SCRAM, credential: ScramCredential | None) -> bytes:
    """Push slixmpp's messages through the server; return the server-final-message."""
    server.client_first(client.process(b""))
    server_first = server.server_first(credential)
    server_final = server.client_final(client.process(server_first))
    client.process(server_final)  # raises if the server signature is wrong
    return server_final


def first_two_steps(
    hash_name: HashName = "SHA-256", credential: ScramCredential | None = None
) -> ScramServer:
    server = ScramServer(hash_name, nonce_factory=fixed("SERVERNONCE"))
    server.client_first(b"n,,n=user,r=CLIENTNONCE")
    server.server_first(credential or derive_credential("pencil", hash_name, iterations=16))
    return server


def expect_failure(condition: str, step: Callable[[], object]) -> SaslFailure:
    with pytest.raises(SaslFailure) as caught:
        step()
    assert caught.value.condition == condition
    return caught.value


# --- RFC test vectors ---------------------------------------------------------------------------


def test_rfc5802_scram_sha1_vector() -> None:
    # RFC 5802 §5: user "user", password "pencil".
    credential = derive_credential(
        "pencil", "SHA-1", salt=base64.b64decode("QSXCR+Q6sek8bf92"), iterations=4096
    )
    server = ScramServer("SHA-1", nonce_factory=fixed("3rfcNHYJY1ZVvWVs7j"))

    assert server.client_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL") == "user"
    assert server.username == "user"
    assert server.authzid is None
    assert server.server_first(credential) == (
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
    )
    assert server.client_final(
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    ) == (b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")


def test_rfc7677_scram_sha256_vector() -> None:
    # RFC 7677 §3: user "user", password "pencil".
    credential = derive_credential(
        "pencil", "SHA-256", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), iterations=4096
    )
    server = ScramServer("SHA-256", nonce_factory=fixed("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"))

    assert server.client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO") == "user"
    assert server.server_first(credential) == (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert server.client_final(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    ) == (b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


# --- against slixmpp's client ---------------------------------------------------------------------


@pytest.mark.parametrize("hash_name", HASHES)
@pytest.mark.parametrize("binding_proposed", [True, False], ids=["flag-n", "flag-y"])
def test_slixmpp_client_authenticates(hash_name: HashName, binding_proposed: bool) -> None:
    credential = derive_credential("pencil", hash_name)
    server = ScramServer(hash_name)
    client = slixmpp_client(hash_name, "juliet", "pencil", binding_proposed=binding_proposed)

    assert run_exchange(server, client, credential).startswith(b"v=")
    assert server.username == "juliet"


def test_slixmpp_client_with_escaped_names_and_authzid() -> None:
    credential = derive_credential("pencil", "SHA-256", iterations=16)
    server = ScramServer("SHA-256")
    client = slixmpp_client("SHA-256", "a,b=c", "pencil", authzid="admin@example.com/x,y")

    run_exchange(server, client, credential)
    assert server.username == "a,b=c"
    assert server.authzid == "admin@example.com/x,y"


@pytest.mark.parametrize("hash_name", HASHES)
def test_wrong_password_is_not_authorized(hash_name: HashName) -> None:
    server = ScramServer(hash_name)
    client = slixmpp_client(hash_name, "juliet", "wrong")
    server.client_first(client.process(b""))
    server_first = server.server_first(derive_credential("pencil", hash_name, iterations=16))
    expect_failure("not-authorized", lambda: server.client_final(client.process(server_first)))


def test_unknown_user_fails_only_at_the_end_after_a_normal_server_first() -> None:
    server = ScramServer("SHA-256")
    client = slixmpp_client("SHA-256", "nobody", "pencil")
    server.client_first(client.process(b""))

    server_first = server.server_first(None)
    attributes = dict(item.split(b"=", 1) for item in server_first.split(b","))
    assert sorted(attributes) == [b"i", b"r", b"s"]
    assert len(base64.b64decode(attributes[b"s"])) == 16
    assert attributes[b"i"] == b"4096"

    expect_failure("not-authorized", lambda: server.client_final(client.process(server_first)))


def fake_salt(username: bytes, key: bytes = b"k" * 32) -> bytes:
    server = ScramServer("SHA-1", nonce_factory=fixed("S"), fake_salt_key=key)
    server.client_first(b"n,,n=" + username + b",r=C")
    return server.server_first(None).split(b",")[1]


def test_fake_salt_is_stable_per_username_and_hides_case() -> None:
    assert fake_salt(b"nobody") == fake_salt(b"nobody")
    assert fake_salt(b"nobody") == fake_salt(b"NoBody")
    assert fake_salt(b"nobody") != fake_salt(b"somebody")
    assert fake_salt(b"nobody") != fake_salt(b"nobody", key=b"j" * 32)


# --- tampering ------------------------------------------------------------------------------------


def test_tampered_nonce_is_not_authorized() -> None:
    server = ScramServer("SHA-1")
    client = slixmpp_client("SHA-1", "juliet", "pencil")
    server.client_first(client.process(b""))
    server_first = server.server_first(derive_credential("pencil", "SHA-1", iterations=16))
    final = client.process(server_first)
    tampered = final.replace(b",r=", b",r=X", 1)
    expect_failure("not-authorized", lambda: server.client_final(tampered))


def test_tampered_channel_binding_is_not_authorized() -> None:
    # The client said "n" in its gs2-header but echoes "y,," (eSws) in c=.
    server = ScramServer("SHA-1")
    client = slixmpp_client("SHA-1", "juliet", "pencil")
    server.client_first(client.process(b""))
    server_first = server.server_first(derive_credential("pencil", "SHA-1", iterations=16))
    final = client.process(server_first)
    assert final.startswith(b"c=biws,")
    expect_failure("not-authorized", lambda: server.client_final(b"c=eSws," + final[len(b"c=biws,") :]))


def test_tampered_proof_is_not_authorized() -> None:
    server = first_two_steps("SHA-1")
    proof = base64.b64encode(bytes(20)).decode()
    expect_failure(
        "not-authorized", lambda: server.client_final(f"c=biws,r=CLIENTNONCESERVERNONCE,p={proof}".encode())
    )


def test_channel_binding_flag_p_is_refused() -> None:
    server = ScramServer("SHA-256")
    failure = expect_failure(
        "malformed-request", lambda: server.client_first(b"p=tls-exporter,,n=user,r=abc")
    )
    assert failure.text == "channel binding is not supported"


# --- garbage at each step -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"garbage",
        b"n,,n=user",
        b"x,,n=user,r=abc",
        b"n,,r=abc,n=user",
        b"n,b=user,n=user,r=abc",
        b"n,a=,n=user,r=abc",
        b"n,,n=,r=abc",
        b"n,,n=us=er,r=abc",
        b"n,,n=us=2Xer,r=abc",
        b"n,,n=user,r=",
        b"n,,n=user,r=a\x7fb",
        b"n,,n=user,r=a b",  # RFC 5802 §7: a nonce is printable ASCII (%x21-2B / %x2D-7E)
        b"n,,n=user,r=abc\n",
        b"n,,n=user,r=\xc3\xa9",
        b"n,,n=user,r=abc,,",
        b"n,,n=user,r=abc,1=x",
        b"n,,n=us\x00er,r=abc",
        b"n,,m=ext,n=user,r=abc",
    ],
)
def test_malformed_client_first(message: bytes) -> None:
    expect_failure("malformed-request", lambda: ScramServer("SHA-1").client_first(message))


def test_client_first_that_is_not_utf8() -> None:
    expect_failure("incorrect-encoding", lambda: ScramServer("SHA-1").client_first(b"n,,n=\xff,r=abc"))


def test_client_first_decodes_saslnames_and_accepts_optional_extensions() -> None:
    server = ScramServer("SHA-1")
    assert server.client_first(b"y,a=al=2Cice=3D,n=r=3Do=2Cmeo,r=abc,x=ext") == "r=o,meo"
    assert server.authzid == "al,ice="


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"garbage",
        b"c=biws,r=CLIENTNONCESERVERNONCE",
        b"r=CLIENTNONCESERVERNONCE,c=biws,p=AAAA",
        b"c=biws,r=CLIENTNONCESERVERNONCE,p=not base64!",
        b"c=bi!ws,r=CLIENTNONCESERVERNONCE,p=AAAA",
        b"c=biws,r=CLIENTNONCESERVERNONCE,7,p=AAAA",
        b"c=biws,r=CLIENTNONCESERVERNONCE,p=AAAA,x=y",
    ],
)
def test_malformed_client_final(message: bytes) -> None:
    server = first_two_steps()
    expect_failure("malformed-request", lambda: server.client_final(message))


def test_client_final_that_is_not_utf8() -> None:
    server = first_two_steps()
    expect_failure("incorrect-encoding", lambda: server.client_final(b"c=biws,r=\xc3,p=AAAA"))


def test_steps_out_of_order_fail() -> None:
    server = ScramServer("SHA-256")
    expect_failure("malformed-request", lambda: server.client_final(b"c=biws,r=x,p=AAAA"))
    expect_failure("malformed-request", lambda: server.client_first(b"n,,n=user,r=abc"))


def test_a_failed_exchange_cannot_continue() -> None:
    server = ScramServer("SHA-256")
    expect_failure("malformed-request", lambda: server.client_first(b"garbage"))
    expect_failure("malformed-request", lambda: server.client_first(b"n,,n=user,r=abc"))


def test_credential_hash_must_match_the_exchange() -> None:
    server = ScramServer("SHA-256")
    server.client_first(b"n,,n=user,r=abc")
    with pytest.raises(ValueError, match="SHA-1"):
        server.server_first(derive_credential("pencil", "SHA-1", iterations=16))


# --- credentials ----------------------------------------------------------------------------------


@pytest.mark.parametrize("hash_name", HASHES)
def test_verify_password(hash_name: HashName) -> None:
    credential = derive_credential("pencil", hash_name, iterations=16)
    assert verify_password("pencil", credential)
    assert not verify_password("Pencil", credential)
    assert not verify_password("", credential)


def test_derive_all_covers_both_hashes_with_their_own_salts() -> None:
    credentials = derive_all("pencil", iterations=16)
    assert sorted(credentials) == ["SHA-1", "SHA-256"]
    assert credentials["SHA-1"].salt != credentials["SHA-256"].salt
    assert len(credentials["SHA-1"].stored_key) == 20
    assert len(credentials["SHA-256"].server_key) == 32
    assert all(verify_password("pencil", c) for c in credentials.values())


def test_password_is_prepared_with_opaquestring() -> None:
    # RFC 8265 §4.2.1: a non-ASCII space maps to U+0020, and NFC applies.
    credential = derive_credential("pen\u00a0cil", "SHA-256", iterations=16)
    assert verify_password("pen cil", credential)
    assert verify_password("caf\u00e9", derive_credential("cafe\u0301", "SHA-256", iterations=16))


def test_password_the_profile_refuses_is_used_raw() -> None:
    credential = derive_credential("pen\x07cil", "SHA-1", iterations=16)
    assert verify_password("pen\x07cil", credential)
    assert not verify_password("pencil", credential)


def test_empty_password_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        derive_credential("", "SHA-1")


def test_credential_keys_stay_out_of_repr() -> None:
    credential = derive_credential("pencil", "SHA-1", iterations=16)
    assert credential.stored_key.hex() not in repr(credential)
    assert "stored_key" not in repr(credential)


def test_credential_rejects_keys_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="20 bytes"):
        ScramCredential("SHA-1", b"salt", 4096, bytes(32), bytes(32))


# --- PLAIN ----------------------------------------------------------------------------------------


def test_plain_without_authzid() -> None:
    assert parse_plain(b"\0juliet\0r0m30myr0m30") == (None, "juliet", "r0m30myr0m30")


def test_plain_with_authzid() -> None:
    # RFC 4616 §4 example.
    assert parse_plain(b"Ursel\0Kurt\0xipj3plmq") == ("Ursel", "Kurt", "xipj3plmq")


def test_plain_keeps_utf8() -> None:
    assert parse_plain("\0jürgen\0pässwörd".encode()) == (None, "jürgen", "pässwörd")


@pytest.mark.parametrize(
    "message", [b"", b"juliet", b"\0juliet", b"\0\0pw", b"\0juliet\0", b"a\0b\0c\0d", b"\0\0"]
)
def test_plain_malformed(message: bytes) -> None:
    expect_failure("malformed-request", lambda: parse_plain(message))


def test_plain_not_utf8() -> None:
    expect_failure("incorrect-encoding", lambda: parse_plain(b"\0jul\xffiet\0pw"))


# --- base64 ---------------------------------------------------------------------------------------


def test_b64decode_strict() -> None:
    assert b64decode_strict("=") == b""
    assert b64decode_strict("") == b""
    assert b64decode_strict("AGp1bGlldAByMG0zMA==") == b"\0juliet\0r0m30"
    assert b64decode_strict("\n  AGp1bGlldAByMG0zMA==\n") == b"\0juliet\0r0m30"


@pytest.mark.parametrize("text", ["abc!", "abc", "ab==cd", "QR==", "AGp1 bGll", "ünï"])
def test_b64decode_strict_rejects(text: str) -> None:
    expect_failure("incorrect-encoding", lambda: b64decode_strict(text))


def test_b64encode() -> None:
    assert b64encode(b"") == "="
    assert b64encode(b"v=abc") == "dj1hYmM="
