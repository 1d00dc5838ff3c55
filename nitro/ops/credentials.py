"""SCRAM credentials as the admin channel carries them: the CLI derives them, so no password crosses it."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, cast

from nitro.xmpp.sasl.credentials import HASHLIB_NAMES, HashName, ScramCredential


def credentials_to_wire(credentials: Mapping[HashName, ScramCredential]) -> list[dict[str, Any]]:
    return [
        {
            "hash": credential.hash_name,
            "salt": base64.b64encode(credential.salt).decode(),
            "iterations": credential.iterations,
            "stored_key": base64.b64encode(credential.stored_key).decode(),
            "server_key": base64.b64encode(credential.server_key).decode(),
        }
        for credential in credentials.values()
    ]


def credentials_from_wire(value: object) -> dict[HashName, ScramCredential]:
    """The credentials of a request; ValueError naming what is wrong."""
    if not isinstance(value, list) or not value:
        raise ValueError("credentials must be a non-empty list")
    credentials: dict[HashName, ScramCredential] = {}
    for entry in value:
        if not isinstance(entry, dict):
            raise ValueError("each credential is an object")
        name = entry.get("hash")
        if name not in HASHLIB_NAMES:
            raise ValueError(f"unknown hash {name!r}")
        iterations = entry.get("iterations")
        if not isinstance(iterations, int) or isinstance(iterations, bool):
            raise ValueError("iterations must be an integer")
        try:
            salt, stored, server = (
                base64.b64decode(str(entry.get(key, "")), validate=True)
                for key in ("salt", "stored_key", "server_key")
            )
        except binascii.Error as exc:
            raise ValueError(f"not base64: {exc}") from exc
        hash_name = cast(HashName, name)
        credentials[hash_name] = ScramCredential(hash_name, salt, iterations, stored, server)
    return credentials
