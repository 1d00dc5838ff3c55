"""Client side of SASL SCRAM-SHA-1/SHA-256 (RFC 5802, RFC 7677) and PLAIN (RFC 4616), sans-IO.

The salted keys are cached per (hash, password, salt, iterations), as real clients cache them: a
login storm costs the load generator HMACs, not PBKDF2, and the server's work per login is unchanged.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
from typing import Literal

HashName = Literal["SHA-1", "SHA-256"]
Mechanism = Literal["SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"]
MECHANISMS: tuple[Mechanism, ...] = ("SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN")

_DIGESTS: dict[HashName, str] = {"SHA-1": "sha1", "SHA-256": "sha256"}
_GS2_HEADER = b"n,,"  # RFC 5802 §7: no channel binding, no authzid


class ScramError(Exception):
    """The server's SCRAM messages are malformed, or its signature is wrong (the server's fault)."""


@functools.lru_cache(maxsize=64)
def salted_keys(hash_name: HashName, password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(ClientKey, ServerKey) of RFC 5802 §3 for an ASCII/UTF-8 password (no SASLprep mapping)."""
    digest = _DIGESTS[hash_name]
    salted = hashlib.pbkdf2_hmac(digest, password.encode(), salt, iterations)
    return hmac.digest(salted, b"Client Key", digest), hmac.digest(salted, b"Server Key", digest)


def _saslname(name: str) -> str:
    # RFC 5802 §5.1: "," and "=" in a name are escaped as "=2C" and "=3D".
    return name.replace("=", "=3D").replace(",", "=2C")


def _attributes(message: bytes) -> dict[str, str]:
    try:
        text = message.decode("ascii")
    except UnicodeDecodeError:
        raise ScramError("SCRAM message is not ASCII") from None
    attributes = {}
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramError(f"malformed SCRAM attribute {part[:20]!r}")
        attributes[part[0]] = part[2:]
    return attributes


class ScramClient:
    """One exchange: client_first() → client_final(server_first) → verify(server_final)."""

    def __init__(
        self, hash_name: HashName, username: str, password: str, *, nonce: str | None = None
    ) -> None:
        self.hash_name = hash_name
        self._digest = _DIGESTS[hash_name]
        self._password = password
        self._nonce = secrets.token_urlsafe(18) if nonce is None else nonce
        self._first_bare = f"n={_saslname(username)},r={self._nonce}"
        self._auth_message = b""
        self._server_key = b""

    def client_first(self) -> bytes:
        return _GS2_HEADER + self._first_bare.encode()

    def client_final(self, server_first: bytes) -> bytes:
        attributes = _attributes(server_first)
        if "m" in attributes:
            raise ScramError("server asks for an unsupported mandatory extension")
        try:
            nonce, salt, iterations = attributes["r"], base64.b64decode(attributes["s"]), int(attributes["i"])
        except (KeyError, ValueError, binascii.Error):
            raise ScramError("server-first-message lacks a valid r, s or i") from None
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce) or iterations < 1:
            raise ScramError("server nonce does not extend ours, or no iterations")
        client_key, self._server_key = salted_keys(self.hash_name, self._password, salt, iterations)
        without_proof = f"c={base64.b64encode(_GS2_HEADER).decode()},r={nonce}".encode()
        self._auth_message = self._first_bare.encode() + b"," + server_first + b"," + without_proof
        stored_key = hashlib.new(self._digest, client_key).digest()
        signature = hmac.digest(stored_key, self._auth_message, self._digest)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return without_proof + b",p=" + base64.b64encode(proof)

    def verify(self, server_final: bytes) -> None:
        """Check the server signature (RFC 5802 §3); raises ScramError unless it proves the key."""
        attributes = _attributes(server_final)
        if "e" in attributes:
            raise ScramError(f"server error {attributes['e']!r}")
        if not self._auth_message:
            raise ScramError("server-final-message before client-final-message")
        expected = hmac.digest(self._server_key, self._auth_message, self._digest)
        try:
            signature = base64.b64decode(attributes.get("v", ""), validate=True)
        except binascii.Error:
            raise ScramError("server signature is not base64") from None
        if not hmac.compare_digest(signature, expected):
            raise ScramError("wrong server signature")


def plain_message(username: str, password: str) -> bytes:
    """RFC 4616 §2: [authzid] NUL authcid NUL passwd."""
    return b"\0" + username.encode() + b"\0" + password.encode()
