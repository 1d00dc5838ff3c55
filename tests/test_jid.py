"""JID parsing and preparation against the examples of RFC 7622 §3.5."""

from __future__ import annotations

import pytest

from nitro.xmpp.jid import JID, InvalidJID

# RFC 7622 §3.5.1: valid JIDs, with the parts they split into.
VALID = [
    ("juliet@example.com", "juliet", "example.com", None),
    ("juliet@example.com/foo", "juliet", "example.com", "foo"),
    ("juliet@example.com/foo bar", "juliet", "example.com", "foo bar"),
    ("juliet@example.com/foo@bar", "juliet", "example.com", "foo@bar"),
    ("foo\\20bar@example.com", "foo\\20bar", "example.com", None),
    ("fussball@example.com", "fussball", "example.com", None),
    ("fußball@example.com", "fußball", "example.com", None),
    ("π@example.com", "π", "example.com", None),
    ("\u03a3@example.com/foo", "\u03c3", "example.com", "foo"),
    ("king@example.com/♚", "king", "example.com", "♚"),
    ("example.com", None, "example.com", None),
    ("example.com/foobar", None, "example.com", "foobar"),
    ("a.example.com/b@example.net", None, "a.example.com", "b@example.net"),
]

# RFC 7622 §3.5.2: invalid JIDs.
INVALID = [
    '"juliet"@example.com',
    "foo bar@example.com",
    "henry\u2163@example.com",
    "♚@example.com",
    "juliet@",
    "/foobar",
    "@example.com",
    "a@b/",
    "",
    "/",
    "@",
]


@pytest.mark.parametrize(("text", "local", "domain", "resource"), VALID)
def test_valid_examples_parse_into_parts(
    text: str, local: str | None, domain: str, resource: str | None
) -> None:
    jid = JID.parse(text)
    assert (jid.local, jid.domain, jid.resource) == (local, domain, resource)


@pytest.mark.parametrize(("text", "local", "domain", "resource"), VALID)
def test_valid_examples_round_trip_through_str(
    text: str, local: str | None, domain: str, resource: str | None
) -> None:
    jid = JID.parse(text)
    assert JID.parse(str(jid)) == jid
    assert JID.make(local, domain, resource) == jid


@pytest.mark.parametrize("text", INVALID)
def test_invalid_examples_are_rejected(text: str) -> None:
    with pytest.raises(InvalidJID):
        JID.parse(text)


@pytest.mark.parametrize("char", ["&", "'", ":", "<", ">", '"'])
def test_localpart_forbids_the_rfc7622_extra_characters(char: str) -> None:
    with pytest.raises(InvalidJID, match="forbidden"):
        JID.parse(f"ju{char}liet@example.com")


def test_localpart_forbids_fullwidth_at_that_maps_to_at() -> None:
    # Width mapping (RFC 8265 §3.3.1) turns U+FF20 into "@", which §3.3.1 of RFC 7622 excludes.
    with pytest.raises(InvalidJID):
        JID.make("a\uff20b", "example.com")


def test_localpart_and_domain_are_case_folded() -> None:
    assert JID.parse("Juliet@Example.COM") == JID.parse("juliet@example.com")
    assert str(JID.parse("Juliet@Example.COM")) == "juliet@example.com"
    assert hash(JID.parse("JULIET@example.com")) == hash(JID.parse("juliet@example.com"))


def test_resource_case_is_preserved() -> None:
    jid = JID.parse("juliet@example.com/Balcony")
    assert jid.resource == "Balcony"
    assert jid != JID.parse("juliet@example.com/balcony")


def test_resource_maps_non_ascii_space_to_space() -> None:
    # RFC 8265 §4.2.1: OpaqueString maps non-ASCII spaces to U+0020.
    assert JID.parse("juliet@example.com/a\u00a0b").resource == "a b"


def test_fullwidth_localpart_is_width_mapped() -> None:
    assert JID.parse("\uff2a\uff55liet@example.com").local == "juliet"


@pytest.mark.parametrize(
    "text",
    [
        "jul\x00iet@example.com",
        "jul\x07iet@example.com",
        "juliet@example.com/a\x1bb",
        "juliet@example.com/\x7f",
        "juliet@exa\x00mple.com",
        "juliet@example.com/\u200b",
    ],
)
def test_control_characters_are_rejected(text: str) -> None:
    with pytest.raises(InvalidJID):
        JID.parse(text)


def test_parts_of_1023_bytes_are_accepted() -> None:
    domain = ".".join(["a" * 63] * 16)
    assert len(domain) == 1023
    jid = JID.parse(f"{'a' * 1023}@{domain}/{'r' * 1023}")
    assert len(jid.local or "") == 1023
    assert len(jid.resource or "") == 1023
    assert jid.domain == domain


def test_1024_byte_parts_are_rejected() -> None:
    with pytest.raises(InvalidJID, match="localpart"):
        JID.parse(f"{'a' * 1024}@example.com")
    with pytest.raises(InvalidJID, match="resourcepart"):
        JID.parse(f"juliet@example.com/{'r' * 1024}")
    domain = ".".join(["a" * 60] * 16 + ["a" * 48])
    assert len(domain) == 1024
    with pytest.raises(InvalidJID, match="domainpart"):
        JID.parse(f"juliet@{domain}")


def test_byte_limit_counts_utf8_octets() -> None:
    # 342 * 3 = 1026 octets in UTF-8, though only 342 characters.
    with pytest.raises(InvalidJID, match="bytes"):
        JID.make("\u4e2d" * 342, "example.com")
    assert JID.make("\u4e2d" * 341, "example.com").local == "\u4e2d" * 341


def test_trailing_dot_is_stripped_once() -> None:
    assert JID.parse("juliet@example.com.") == JID.parse("juliet@example.com")
    assert JID.parse("juliet@example.com\u3002").domain == "example.com"
    with pytest.raises(InvalidJID):
        JID.parse("juliet@example.com..")
    with pytest.raises(InvalidJID):
        JID.parse("juliet@.")


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("juliet@[::1]/r", "[::1]"),
        ("[2001:DB8:0:0:0:0:0:1]", "[2001:db8::1]"),
        ("xn--bcher-kva.example", "bücher.example"),
        ("Bücher.example", "bücher.example"),
        ("\uff45xample.com", "example.com"),
        ("_xmpp-client.example.com", "_xmpp-client.example.com"),
    ],
)
def test_domain_forms(text: str, domain: str) -> None:
    assert JID.parse(text).domain == domain


@pytest.mark.parametrize(
    "domain",
    [
        "exa mple.com",
        "example..com",
        "-example.com",
        "example-.com",
        "exam!ple.com",
        "1.2.3.999",
        "[::1",
        "[not-ip]",
        "[fe80::1%eth0]",
        "xn--abc.example",
        "a" * 64 + ".com",
    ],
)
def test_bad_domains_are_rejected(domain: str) -> None:
    with pytest.raises(InvalidJID, match="domainpart"):
        JID.make("juliet", domain)


def test_bare_and_with_resource() -> None:
    full = JID.parse("juliet@example.com/balcony")
    assert not full.is_bare
    assert full.bare == JID.parse("juliet@example.com")
    assert full.bare.is_bare
    assert full.bare.with_resource("balcony") == full
    assert JID.parse("example.com").with_resource("x") == JID.parse("example.com/x")
    with pytest.raises(InvalidJID):
        full.with_resource("")


def test_jids_are_hashable_values() -> None:
    seen = {JID.parse("juliet@example.com/a"), JID.parse("JULIET@EXAMPLE.COM/a")}
    assert len(seen) == 1
    with pytest.raises(AttributeError):
        JID.parse("juliet@example.com").local = "romeo"  # type: ignore[misc]  # frozen, on purpose


def test_invalid_jid_is_a_value_error_naming_the_part() -> None:
    with pytest.raises(ValueError, match=r"localpart: DISALLOWED/spaces"):
        JID.parse("foo bar@example.com")


def test_parse_is_cached() -> None:
    assert JID.parse("romeo@example.net/orchard") is JID.parse("romeo@example.net/orchard")


def test_the_bare_jid_of_full_jids_is_one_shared_value() -> None:
    phone, laptop = JID.parse("juliet@example.com/phone"), JID.parse("Juliet@Example.com/laptop")
    assert phone.bare == JID("juliet", "example.com", None)
    assert phone.bare is laptop.bare  # built once: routing asks for it with every stanza
    assert phone.bare.bare is phone.bare
    assert JID.parse("example.com/admin").bare == JID(None, "example.com", None)
