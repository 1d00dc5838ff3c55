"""Compact encodings of cached values (credentials, rosters, vCards, block lists, …) for the ring.

Each codec names its kind and version; the version is in the Redis key (`nitro.storage.ring.keys`) and in the
first byte of the value, so a value of another shape is never decoded as this one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, get_args

from nitro.storage.errors import StorageError
from nitro.storage.models import ArchiveDefault, ArchivePrefs, Roster, RosterItem, Subscription
from nitro.xmpp.sasl.credentials import HashName, ScramCredential

T = TypeVar("T")

_HASH_NAMES: dict[str, HashName] = {name: name for name in get_args(HashName)}
_SUBSCRIPTIONS: dict[str, Subscription] = {name: name for name in get_args(Subscription)}
_DEFAULTS: dict[str, ArchiveDefault] = {name: name for name in get_args(ArchiveDefault)}


class CorruptValue(StorageError):
    """A cached value that does not decode (another version's shape, or damaged): treated as a miss."""


@dataclass(frozen=True, slots=True)
class Codec(Generic[T]):
    """How one kind of value is stored: `kind.vN` in the key, version byte + payload in the value."""

    kind: str
    version: int
    to_json: Callable[[T], Any]
    from_json: Callable[[Any], T]
    # The in-process cache keeps the encoded value (decoded on each hit): for values read rarely while kept,
    # whose objects take much more memory than their encoding.
    kept_encoded: bool = False
    # About len(encode(value)) without encoding: what the in-process cache counts for a value it keeps as
    # objects without a ring (encoding a roster of 20 only to measure it cost ~30 µs per login).
    size: Callable[[T], int] | None = None

    def encoded_size(self, value: T) -> int:
        """The cache's byte count of `value`: `size` when there is one, else the length of its encoding."""
        return len(self.encode(value)) if self.size is None else self.size(value)

    def encode(self, value: T) -> bytes:
        payload = json.dumps(self.to_json(value), separators=(",", ":"), ensure_ascii=False)
        return bytes([self.version]) + payload.encode()

    def decode(self, data: bytes) -> T:
        if not data or data[0] != self.version:
            raise CorruptValue(f"{self.kind}: version {data[:1]!r}, expected {self.version}")
        try:
            return self.from_json(json.loads(data[1:]))
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptValue(f"{self.kind}: {exc}") from exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _optional_bytes(value: bytes | None) -> str | None:
    return None if value is None else _b64(value)


def _from_optional_bytes(value: Any) -> bytes | None:
    return None if value is None else _unb64(value)


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise TypeError("expected a list of strings")
    return tuple(value)


# -- credentials ------------------------------------------------------------------------------------------

Credentials = dict[HashName, ScramCredential] | None


def _credentials_to_json(value: Credentials) -> Any:
    if value is None:
        return None
    return [
        [c.hash_name, _b64(c.salt), c.iterations, _b64(c.stored_key), _b64(c.server_key)]
        for c in value.values()
    ]


def _credentials_from_json(value: Any) -> Credentials:
    if value is None:
        return None
    result: dict[HashName, ScramCredential] = {}
    for hash_name, salt, iterations, stored_key, server_key in value:
        name = _HASH_NAMES[hash_name]
        result[name] = ScramCredential(
            hash_name=name,
            salt=_unb64(salt),
            iterations=int(iterations),
            stored_key=_unb64(stored_key),
            server_key=_unb64(server_key),
        )
    return result


# -- rosters ------------------------------------------------------------------------------------------------


def _item_to_json(item: RosterItem) -> Any:
    flags = item.ask | item.pending_in << 1 | item.approved << 2 | item.in_roster << 3
    return [item.jid, item.name, item.subscription, flags, list(item.groups), _optional_bytes(item.request)]


def _item_from_json(value: Any) -> RosterItem:
    jid, name, subscription, flags, groups, *rest = value  # items cached before `request` have five fields
    request = rest[0] if rest else None
    if not isinstance(jid, str) or not (name is None or isinstance(name, str)):
        raise TypeError("roster item jid/name")
    return RosterItem(
        jid=jid,
        name=name,
        subscription=_SUBSCRIPTIONS[subscription],
        ask=bool(flags & 1),
        pending_in=bool(flags & 2),
        approved=bool(flags & 4),
        groups=_strings(groups),
        in_roster=bool(flags & 8),
        request=_from_optional_bytes(request),
    )


def _roster_to_json(roster: Roster) -> Any:
    return [roster.version, [_item_to_json(item) for item in roster.items]]


def _roster_size(roster: Roster) -> int:
    """About the length of the roster's encoding (code points for UTF-8 bytes; JSON's quotes and commas)."""
    size = 16
    for item in roster.items:
        size += 24 + len(item.jid) + len(item.subscription)
        if item.name is not None:
            size += len(item.name)
        for group in item.groups:
            size += len(group) + 3
        if item.request is not None:
            size += len(item.request) * 4 // 3 + 4
    return size


def _strings_size(strings: list[str]) -> int:
    return 3 + sum(len(string) + 3 for string in strings)


def _roster_from_json(value: Any) -> Roster:
    version, items = value
    return Roster(version=int(version), items=tuple(_item_from_json(item) for item in items))


# -- archive preferences ------------------------------------------------------------------------------------


def _prefs_to_json(prefs: ArchivePrefs | None) -> Any:
    return None if prefs is None else [prefs.default, list(prefs.always), list(prefs.never)]


def _prefs_from_json(value: Any) -> ArchivePrefs | None:
    if value is None:
        return None
    default, always, never = value
    return ArchivePrefs(default=_DEFAULTS[default], always=_strings(always), never=_strings(never))


# Credentials are read at a login only, and cached for the next one: as objects (a dict, two credentials, six
# bytes objects) ~760 B of every online user's memory, encoded ~300 B (issue 16).
ACCOUNT: Codec[Credentials] = Codec(
    "account", 1, _credentials_to_json, _credentials_from_json, kept_encoded=True
)
ROSTER: Codec[Roster] = Codec("roster", 1, _roster_to_json, _roster_from_json, size=_roster_size)
VCARD: Codec[bytes | None] = Codec("vcard", 1, _optional_bytes, _from_optional_bytes)
PRIVATE: Codec[bytes | None] = Codec("private", 1, _optional_bytes, _from_optional_bytes)
BLOCKLIST: Codec[list[str]] = Codec(
    "blocklist", 1, list, lambda value: list(_strings(value)), size=_strings_size
)
ARCHIVE_PREFS: Codec[ArchivePrefs | None] = Codec("archprefs", 1, _prefs_to_json, _prefs_from_json)

CACHED_KINDS: tuple[Codec[Any], ...] = (ACCOUNT, ROSTER, VCARD, PRIVATE, BLOCKLIST, ARCHIVE_PREFS)
