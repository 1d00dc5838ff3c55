"""XMPP addresses (RFC 7622): parsing, PRECIS preparation and comparison of JIDs."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from precis_i18n import get_profile

# RFC 7622 §3.3.1: localparts use the UsernameCaseMapped profile (RFC 8265 §3.3);
# §3.4.1: resourceparts use the OpaqueString profile (RFC 8265 §4.2).
_LOCALPART = get_profile("UsernameCaseMapped")
_RESOURCEPART = get_profile("OpaqueString")

# RFC 7622 §3.3.1: characters the localpart excludes on top of the PRECIS profile.
_LOCAL_FORBIDDEN = frozenset("\"&'/:<>@")

# RFC 7622 §3.2, §3.3, §3.4: each part is 1..1023 octets once prepared.
_MAX_PART_BYTES = 1023
# RFC 1034 §3.1: a DNS label is at most 63 octets.
_MAX_LABEL_BYTES = 63
_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
# UTS 46 §4 maps these full stops to "." before splitting a name into labels.
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})

_CACHE_SIZE = 8192


class InvalidJID(ValueError):
    """A string that is not a valid JID; the message says which part failed and why."""


@dataclass(frozen=True, slots=True)
class JID:
    """A prepared JID; build it with `parse` or `make`, which enforce RFC 7622."""

    local: str | None
    domain: str
    resource: str | None

    @classmethod
    def parse(cls, text: str) -> JID:
        """Split `text` per RFC 7622 §3.1 and prepare each part; raises InvalidJID."""
        return _parse(text)

    @classmethod
    def make(cls, local: str | None, domain: str, resource: str | None = None) -> JID:
        """Prepare and validate separately supplied parts; raises InvalidJID."""
        return JID(
            None if local is None else _prep_local(local),
            _prep_domain(domain),
            None if resource is None else _prep_resource(resource),
        )

    @property
    def bare(self) -> JID:
        """This JID without its resourcepart (the "bare JID" of RFC 7622 §3.1)."""
        if self.resource is None:
            return self
        return _bare(self.local, self.domain)

    @property
    def is_bare(self) -> bool:
        return self.resource is None

    def with_resource(self, resource: str) -> JID:
        """The full JID of this bare JID with `resource` prepared and attached."""
        return JID(self.local, self.domain, _prep_resource(resource))

    def __str__(self) -> str:
        text = self.domain if self.local is None else f"{self.local}@{self.domain}"
        return text if self.resource is None else f"{text}/{self.resource}"


@lru_cache(maxsize=_CACHE_SIZE)
def _bare(local: str | None, domain: str) -> JID:
    """The bare JID of prepared parts, shared: every stanza's route asks for its sender's."""
    return JID(local, domain, None)


@lru_cache(maxsize=_CACHE_SIZE)
def _parse(text: str) -> JID:
    # RFC 7622 §3.1: the resourcepart starts at the first "/", then the localpart ends at
    # an "@" before it (RFC says the first; the last gives the same verdict, since "@" is
    # forbidden in both localpart and domainpart).
    rest, slash, resource = text.partition("/")
    local, at, domain = rest.rpartition("@")
    return JID(
        _prep_local(local) if at else None,
        _prep_domain(domain),
        _prep_resource(resource) if slash else None,
    )


def _check_raw_length(part: str, value: str) -> None:
    # Bound the work done on hostile input before preparation; preparation can shrink a
    # string (width mapping, NFC), so the exact limit is checked on the prepared value.
    if not value:
        raise InvalidJID(f"empty {part}")
    if len(value) > _MAX_PART_BYTES * 4:
        raise InvalidJID(f"{part} is far longer than {_MAX_PART_BYTES} bytes")


def _check_length(part: str, value: str) -> None:
    size = len(value.encode("utf-8", "surrogatepass"))
    if size == 0:
        raise InvalidJID(f"empty {part}")
    if size > _MAX_PART_BYTES:
        raise InvalidJID(f"{part} is {size} bytes, more than {_MAX_PART_BYTES}")


@lru_cache(maxsize=_CACHE_SIZE)
def _prep_local(local: str) -> str:
    _check_raw_length("localpart", local)
    try:
        prepared = _LOCALPART.enforce(local)
    except UnicodeError as exc:
        raise InvalidJID(f"localpart: {_precis_reason(exc)}") from None
    bad = _LOCAL_FORBIDDEN.intersection(prepared)
    if bad:
        raise InvalidJID(f"localpart contains forbidden character {min(bad)!r}")
    _check_length("localpart", prepared)
    return prepared


@lru_cache(maxsize=_CACHE_SIZE)
def _prep_resource(resource: str) -> str:
    _check_raw_length("resourcepart", resource)
    try:
        prepared = _RESOURCEPART.enforce(resource)
    except UnicodeError as exc:
        raise InvalidJID(f"resourcepart: {_precis_reason(exc)}") from None
    _check_length("resourcepart", prepared)
    return prepared


@lru_cache(maxsize=_CACHE_SIZE)
def _prep_domain(domain: str) -> str:
    _check_raw_length("domainpart", domain)
    # RFC 7622 §3.2: a single trailing label separator is stripped.
    domain = domain.translate(_DOTS)
    if domain.endswith("."):
        domain = domain[:-1]
    _check_length("domainpart", domain)
    if domain.startswith("["):
        return _prep_ipv6_literal(domain)
    labels = [_prep_label(label) for label in domain.lower().split(".")]
    prepared = ".".join(labels)
    if labels[-1].isdigit():
        # RFC 1123 §2.1: an all-numeric final label is only valid in an IPv4 address.
        try:
            ipaddress.IPv4Address(prepared)
        except ValueError:
            raise InvalidJID(f"domainpart {prepared!r} is neither a hostname nor an IPv4 address") from None
    _check_length("domainpart", prepared)
    return prepared


def _prep_ipv6_literal(domain: str) -> str:
    # RFC 7622 §3.2: an IP literal is an IPv6 address in brackets (RFC 3986 §3.2.2), no zone id.
    if not domain.endswith("]") or "%" in domain:
        raise InvalidJID("domainpart IP literal is not a bracketed IPv6 address")
    try:
        address = ipaddress.IPv6Address(domain[1:-1])
    except ValueError:
        raise InvalidJID("domainpart IP literal is not a bracketed IPv6 address") from None
    return f"[{address.compressed}]"


def _prep_label(label: str) -> str:
    if not label:
        raise InvalidJID("domainpart has an empty label")
    if label.isascii() and not label.startswith("xn--"):
        _check_ldh(label)
        return label
    # RFC 7622 §3.2.2 wants U-labels (A-labels converted) after the UTS 46 mapping of
    # §3.2.3. The standard library has neither UTS 46 nor IDNA 2008, so we use its IDNA 2003
    # codec: ToUnicode(ToASCII(label)) maps case, width and compatibility forms to one
    # canonical U-label. Known differences from IDNA 2008: "ß" becomes "ss", ZWJ/ZWNJ are
    # dropped, and symbols such as "♚" are accepted.
    try:
        alabel = label.encode("idna")
        ulabel = alabel.decode("idna")
    except UnicodeError:
        raise InvalidJID(f"domainpart label {label!r} is not a valid internationalized label") from None
    _check_ldh(alabel.decode("ascii"))
    return ulabel


def _check_ldh(label: str) -> None:
    # RFC 5890 §2.3.1 LDH labels, plus "_" which service names use (RFC 2782).
    if len(label) > _MAX_LABEL_BYTES:
        raise InvalidJID(f"domainpart label is longer than {_MAX_LABEL_BYTES} octets")
    if label.startswith("-") or label.endswith("-"):
        raise InvalidJID(f"domainpart label {label!r} starts or ends with a hyphen")
    if not _LDH.issuperset(label.lower().replace("_", "")):
        raise InvalidJID(f"domainpart label {label!r} has characters outside letters, digits and hyphen")


def _precis_reason(exc: UnicodeError) -> str:
    # precis_i18n raises UnicodeEncodeError whose `reason` is e.g. "DISALLOWED/spaces".
    reason = getattr(exc, "reason", None)
    return reason if isinstance(reason, str) else str(exc)
