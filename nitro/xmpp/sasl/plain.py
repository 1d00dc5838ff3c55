"""The PLAIN mechanism (RFC 4616): split the single client message into its three fields."""

from __future__ import annotations

from nitro.xmpp.sasl import SaslFailure


def parse_plain(message: bytes) -> tuple[str | None, str, str]:
    """Return (authzid, authcid, password); an empty authzid is None.

    RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd, where authcid and
    passwd are 1*SAFE (any UTF-8 but NUL).
    """
    fields = message.split(b"\0")
    if len(fields) != 3:
        raise SaslFailure("malformed-request", "PLAIN message needs exactly two NUL separators")
    try:
        authzid, authcid, password = (field.decode("utf-8") for field in fields)
    except UnicodeDecodeError:
        raise SaslFailure("incorrect-encoding", "PLAIN message is not UTF-8") from None
    if not authcid or not password:
        raise SaslFailure("malformed-request", "empty authcid or password")
    return authzid or None, authcid, password
