"""Sans-IO SASL server mechanisms (RFC 6120 §6): the failure conditions and base64 helpers they share."""

from __future__ import annotations

import base64
import binascii
from typing import Literal

SaslCondition = Literal[
    "aborted",
    "account-disabled",
    "credentials-expired",
    "encryption-required",
    "incorrect-encoding",
    "invalid-authzid",
    "invalid-mechanism",
    "malformed-request",
    "mechanism-too-weak",
    "not-authorized",
    "temporary-auth-failure",
]
"""The defined conditions of a SASL <failure/> (RFC 6120 §6.5)."""

# XML whitespace (XML 1.0 §2.3 "S") a pretty-printing client may put around the base64 text.
_XML_SPACE = " \t\r\n"


class SaslFailure(Exception):
    """The exchange failed; the caller sends <failure><condition/><text/></failure> (RFC 6120 §6.4.5)."""

    def __init__(self, condition: SaslCondition, text: str | None = None) -> None:
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition: SaslCondition = condition
        self.text = text


def b64decode_strict(text: str) -> bytes:
    """Decode the base64 text of <auth/> or <response/>; "=" (or nothing) is empty data.

    RFC 6120 §6.4.2: a single "=" is a present-but-empty response; anything that is not
    canonical RFC 4648 §4 base64 fails with incorrect-encoding (§6.5.2).
    """
    text = text.strip(_XML_SPACE)
    if text in ("", "="):
        return b""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SaslFailure("incorrect-encoding", "invalid base64") from None
    # RFC 4648 §3.5: reject non-zero pad bits so each payload has one encoding.
    if base64.b64encode(data).decode("ascii") != text:
        raise SaslFailure("incorrect-encoding", "non-canonical base64")
    return data


def b64encode(data: bytes) -> str:
    """Encode challenge or success data; empty data is "=" (RFC 6120 §6.3.10, §6.4.2)."""
    return base64.b64encode(data).decode("ascii") if data else "="
