"""Server side of SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677), without channel binding yet.

Feed it the decoded client messages in order; it returns what to send back or raises SaslFailure.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from enum import Enum

from precis_i18n import get_profile

from nitro.xmpp.sasl import SaslFailure
from nitro.xmpp.sasl.credentials import (
    DEFAULT_ITERATIONS,
    HASHLIB_NAMES,
    SALT_BYTES,
    HashName,
    ScramCredential,
)

# Key for the fake salts of unknown users (RFC 5802 §9 asks servers not to reveal which
# users exist). Per process unless the caller passes one shared by every node.
_FAKE_SALT_KEY = secrets.token_bytes(32)
_PRINTABLE = re.compile(r"[!-+\--~]+")  # RFC 5802 §7: printable = %x21-2B / %x2D-7E (",", 0x2C, excluded)

_USERNAME = get_profile("UsernameCaseMapped")


def _new_nonce() -> str:
    # RFC 5802 §5.1 "r=": printable ASCII without ","; URL-safe base64 qualifies.
    return secrets.token_urlsafe(18)


class _Step(Enum):
    CLIENT_FIRST = "client-first"
    SERVER_FIRST = "server-first"
    CLIENT_FINAL = "client-final"
    DONE = "done"
    FAILED = "failed"


class ScramServer:
    """One SCRAM exchange: client_first → server_first → client_final, each at most once."""

    def __init__(
        self,
        hash_name: HashName,
        *,
        nonce_factory: Callable[[], str] = _new_nonce,
        fake_salt_key: bytes | None = None,
    ) -> None:
        self.hash_name: HashName = hash_name
        self.username: str | None = None
        self.authzid: str | None = None
        self._digest = HASHLIB_NAMES[hash_name]
        self._nonce_factory = nonce_factory
        self._fake_salt_key = _FAKE_SALT_KEY if fake_salt_key is None else fake_salt_key
        self._step = _Step.CLIENT_FIRST
        self._gs2_header = b""
        self._client_first_bare = ""
        self._client_nonce = ""
        self._nonce = ""
        self._server_first = ""
        self._credential: ScramCredential | None = None

    def client_first(self, message: bytes) -> str:
        """Parse the client-first-message (RFC 5802 §7) and return the decoded username."""
        self._expect(_Step.CLIENT_FIRST)
        with self._failing():
            text = _decode(message)
            # gs2-header = gs2-cbind-flag "," [authzid] ","
            parts = text.split(",")
            if len(parts) < 4:
                raise SaslFailure("malformed-request", "too few attributes in client-first-message")
            flag, authzid = parts[0], parts[1]
            if flag.startswith("p="):
                # RFC 5802 §6: "p" asks for channel binding, which only the -PLUS mechanisms
                # (not offered yet) carry.
                raise SaslFailure("malformed-request", "channel binding is not supported")
            if flag not in ("n", "y"):
                # "y": the client could bind but thinks we cannot; we offer no -PLUS
                # mechanism, so this is not a downgrade (RFC 5802 §6).
                raise SaslFailure("malformed-request", "invalid gs2-cbind-flag")
            if authzid:
                self.authzid = _saslname(_attribute(authzid, "a"))
            bare = parts[2:]
            # RFC 5802 §5.1 "m=": mandatory extensions we do not know must fail.
            if bare[0].startswith("m="):
                raise SaslFailure("malformed-request", "unsupported mandatory extension")
            username = _saslname(_attribute(bare[0], "n"))
            nonce = _attribute(bare[1], "r")
            if not _is_printable(nonce):
                raise SaslFailure("malformed-request", "invalid client nonce")
            _check_extensions(bare[2:])
            self._gs2_header = f"{flag},{authzid},".encode()
            self._client_first_bare = ",".join(bare)
            self._client_nonce = nonce
            self.username = username
        self._step = _Step.SERVER_FIRST
        return username

    def server_first(self, credential: ScramCredential | None) -> bytes:
        """The server-first-message; pass None for an unknown user to fail only at the end."""
        self._expect(_Step.SERVER_FIRST)
        if credential is not None and credential.hash_name != self.hash_name:
            raise ValueError(f"a {credential.hash_name} credential for a {self.hash_name} exchange")
        self._credential = credential
        if credential is None:
            salt, iterations = self._fake_salt(), DEFAULT_ITERATIONS
        else:
            salt, iterations = credential.salt, credential.iterations
        server_nonce = self._nonce_factory()
        if not server_nonce or not _is_printable(server_nonce):
            raise ValueError("the server nonce must be printable ASCII without ','")
        self._nonce = self._client_nonce + server_nonce
        self._server_first = f"r={self._nonce},s={base64.b64encode(salt).decode('ascii')},i={iterations}"
        self._step = _Step.CLIENT_FINAL
        return self._server_first.encode("ascii")

    def client_final(self, message: bytes) -> bytes:
        """Check the client-final-message (RFC 5802 §7); return the server-final-message "v=…"."""
        self._expect(_Step.CLIENT_FINAL)
        with self._failing():
            text = _decode(message)
            # client-final-message = channel-binding "," nonce ["," extensions] "," proof
            parts = text.split(",")
            if len(parts) < 3:
                raise SaslFailure("malformed-request", "too few attributes in client-final-message")
            binding = _b64(_attribute(parts[0], "c"))
            nonce = _attribute(parts[1], "r")
            _check_extensions(parts[2:-1])
            proof = _b64(_attribute(parts[-1], "p"))
            without_proof = text[: text.rindex(",")]
            # RFC 5802 §5.1 "c=": without channel binding it is base64 of the gs2-header.
            if not hmac.compare_digest(binding, self._gs2_header):
                raise SaslFailure("not-authorized", "channel binding mismatch")
            if not hmac.compare_digest(nonce.encode(), self._nonce.encode()):
                raise SaslFailure("not-authorized", "nonce mismatch")
            credential = self._fake_credential() if self._credential is None else self._credential
            auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
            # RFC 5802 §3: ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage), and
            # the proof is good when H(ClientKey) equals StoredKey.
            signature = hmac.digest(credential.stored_key, auth_message, self._digest)
            if len(proof) != len(signature):
                raise SaslFailure("not-authorized", "wrong proof length")
            client_key = (int.from_bytes(proof) ^ int.from_bytes(signature)).to_bytes(len(proof))
            stored_key = hashlib.new(self._digest, client_key).digest()
            if not hmac.compare_digest(stored_key, credential.stored_key) or self._credential is None:
                raise SaslFailure("not-authorized")
            server_signature = hmac.digest(credential.server_key, auth_message, self._digest)
        self._step = _Step.DONE
        return b"v=" + base64.b64encode(server_signature)

    def _expect(self, step: _Step) -> None:
        if self._step is not step:
            self._step = _Step.FAILED
            raise SaslFailure("malformed-request", f"unexpected {step.value} message")

    @contextmanager
    def _failing(self) -> Iterator[None]:
        # A step that raises ends the exchange: no later step may be attempted.
        try:
            yield
        except BaseException:
            self._step = _Step.FAILED
            raise

    def _fake_salt(self) -> bytes:
        # Deterministic per username, so probing twice sees the same salt, and keyed on the
        # prepared name so "Alice" and "alice" agree as they would for a real account.
        name = self.username or ""
        with suppress(UnicodeError):
            name = _USERNAME.enforce(name)
        key = hmac.digest(self._fake_salt_key, f"{self.hash_name}\0{name}".encode(), "sha256")
        return key[:SALT_BYTES]

    def _fake_credential(self) -> ScramCredential:
        size = hashlib.new(self._digest).digest_size
        return ScramCredential(
            self.hash_name,
            self._fake_salt(),
            DEFAULT_ITERATIONS,
            secrets.token_bytes(size),
            secrets.token_bytes(size),
        )


def _decode(message: bytes) -> str:
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslFailure("incorrect-encoding", "SCRAM message is not UTF-8") from None
    if "\0" in text:
        raise SaslFailure("malformed-request", "NUL in SCRAM message")
    return text


def _attribute(part: str, name: str) -> str:
    if not part.startswith(f"{name}="):
        raise SaslFailure("malformed-request", f"expected attribute {name!r}")
    return part[2:]


def _saslname(value: str) -> str:
    # RFC 5802 §5.1: saslname = 1*(value-safe-char / "=2C" / "=3D").
    if not value:
        raise SaslFailure("malformed-request", "empty name")
    pieces = value.split("=")
    decoded = [pieces[0]]
    for piece in pieces[1:]:
        escape = {"2C": ",", "3D": "="}.get(piece[:2])
        if escape is None:
            raise SaslFailure("malformed-request", "invalid '=' escape in name")
        decoded.append(escape + piece[2:])
    return "".join(decoded)


def _is_printable(value: str) -> bool:
    return _PRINTABLE.fullmatch(value) is not None


def _check_extensions(parts: list[str]) -> None:
    # RFC 5802 §7: extensions = attr-val *("," attr-val); attr-val = ALPHA "=" value.
    for part in parts:
        if len(part) < 3 or not (part[0].isascii() and part[0].isalpha()) or part[1] != "=":
            raise SaslFailure("malformed-request", "invalid extension attribute")


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SaslFailure("malformed-request", "invalid base64 in SCRAM attribute") from None
