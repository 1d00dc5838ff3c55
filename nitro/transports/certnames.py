"""Which XMPP domains a certificate covers: DNS-IDs (one leftmost wildcard label), SRV-IDs
(`_xmpp-client.`) and XmppAddr identifiers, as RFC 6120 §13.7.1.2, RFC 6125 and RFC 7590 describe."""

from __future__ import annotations

import contextlib
import ipaddress

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

ID_ON_XMPPADDR = ObjectIdentifier("1.3.6.1.5.5.7.8.5")  # RFC 6120 §13.7.1.4, a UTF8String
ID_ON_DNSSRV = ObjectIdentifier("1.3.6.1.5.5.7.8.7")  # RFC 4985 SRVName, an IA5String
_STRING_TAGS = (0x0C, 0x16)  # DER UTF8String, IA5String


def certificate_names(certificate: x509.Certificate) -> list[str]:
    """The names a certificate presents, as readable strings ("*.example.com", "_xmpp-client.example.com",
    "xmpp:example.com", "192.0.2.1"); the subject CN only when there is no subjectAltName."""
    try:
        alt_names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [str(attr.value) for attr in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    names: list[str] = [*alt_names.get_values_for_type(x509.DNSName)]
    names += [str(address) for address in alt_names.get_values_for_type(x509.IPAddress)]
    for other in alt_names.get_values_for_type(x509.OtherName):
        value = _der_string(other.value)
        if value is not None and other.type_id == ID_ON_DNSSRV:
            names.append(value)
        elif value is not None and other.type_id == ID_ON_XMPPADDR:
            names.append(f"xmpp:{value}")
    return names


def covers(certificate: x509.Certificate, domain: str) -> bool:
    """True when a client connecting to `domain` can accept this certificate (RFC 6125 §6.4)."""
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(domain)
        return str(address) in certificate_names(certificate)
    domain = domain.rstrip(".").lower()
    for name in certificate_names(certificate):
        name = name.rstrip(".").lower()
        if name in (domain, f"_xmpp-client.{domain}", f"xmpp:{domain}"):
            return True
        # RFC 6125 §6.4.3: "*" only as the whole leftmost label, matching exactly one label.
        if name.startswith("*.") and "." in domain and domain.split(".", 1)[1] == name[2:]:
            return True
    return False


def _der_string(der: bytes) -> str | None:
    """The text of a DER UTF8String or IA5String (short or long form length), None for anything else."""
    if len(der) < 2 or der[0] not in _STRING_TAGS:
        return None
    length, offset = der[1], 2
    if length & 0x80:
        count = length & 0x7F
        length, offset = int.from_bytes(der[2 : 2 + count], "big"), 2 + count
    body = der[offset : offset + length]
    if len(body) != length:
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None
