"""SCRAM credentials (RFC 5802 §3): derive them from a password, and check a PLAIN password against them."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Literal

from precis_i18n import get_profile

HashName = Literal["SHA-1", "SHA-256"]

# hashlib names for the SCRAM hash names (RFC 5802 §4, RFC 7677 §2).
HASHLIB_NAMES: dict[HashName, str] = {"SHA-1": "sha1", "SHA-256": "sha256"}

# RFC 7677 §4: at least 4096 iterations for SCRAM-SHA-256.
DEFAULT_ITERATIONS = 4096
SALT_BYTES = 16

_PASSWORD = get_profile("OpaqueString")


@dataclass(frozen=True, slots=True)
class ScramCredential:
    """What the server stores instead of a password (RFC 5802 §3 StoredKey and ServerKey)."""

    hash_name: HashName
    salt: bytes
    iterations: int
    # Either key lets an attacker impersonate the user or the server: keep them out of logs.
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        size = hashlib.new(HASHLIB_NAMES[self.hash_name]).digest_size
        if len(self.stored_key) != size or len(self.server_key) != size:
            raise ValueError(f"{self.hash_name} keys must be {size} bytes")
        if self.iterations < 1 or not self.salt:
            raise ValueError("a SCRAM credential needs a salt and at least one iteration")


def derive_credential(
    password: str,
    hash_name: HashName,
    *,
    salt: bytes | None = None,
    iterations: int = DEFAULT_ITERATIONS,
) -> ScramCredential:
    """Compute the SCRAM credential for `password`; the password itself is not kept."""
    if not password:
        raise ValueError("empty password")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    stored_key, server_key = _keys(password, hash_name, salt, iterations)
    return ScramCredential(hash_name, salt, iterations, stored_key, server_key)


def derive_all(password: str, *, iterations: int = DEFAULT_ITERATIONS) -> dict[HashName, ScramCredential]:
    """Credentials for every hash we offer, each with its own salt."""
    return {name: derive_credential(password, name, iterations=iterations) for name in HASHLIB_NAMES}


def verify_password(password: str, credential: ScramCredential) -> bool:
    """Whether a PLAIN password (RFC 4616) matches a stored SCRAM credential."""
    if not password:
        return False
    stored_key, _ = _keys(password, credential.hash_name, credential.salt, credential.iterations)
    return hmac.compare_digest(stored_key, credential.stored_key)


def _keys(password: str, hash_name: HashName, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    # RFC 5802 §3: SaltedPassword = Hi(Normalize(password), salt, i), Hi being PBKDF2 with
    # HMAC (RFC 2898 §5.2); ClientKey = HMAC(SaltedPassword, "Client Key"),
    # StoredKey = H(ClientKey), ServerKey = HMAC(SaltedPassword, "Server Key").
    digest = HASHLIB_NAMES[hash_name]
    salted = hashlib.pbkdf2_hmac(digest, _normalize(password), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", digest)
    server_key = hmac.digest(salted, b"Server Key", digest)
    return hashlib.new(digest, client_key).digest(), server_key


def _normalize(password: str) -> bytes:
    # RFC 7677 §4 and RFC 8265 §4.2: passwords are prepared with the OpaqueString profile
    # (RFC 5802's SASLprep is obsolete). A password the profile refuses (e.g. one holding a
    # control character) is used as typed, so accounts created elsewhere keep working.
    try:
        prepared = _PASSWORD.enforce(password)
    except UnicodeError:
        prepared = password
    return prepared.encode("utf-8", "surrogatepass")
