"""What the core depends on: one Protocol per kind of permanent data, implemented by SQL and caches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from nitro.sasl.credentials import HashName, ScramCredential
from nitro.storage.models import OfflineMessage, Roster, RosterItem


class AccountStore(Protocol):
    """Accounts and their SCRAM credentials; usernames are prepared JID localparts (RFC 7622 §3.3)."""

    async def create(self, username: str, credentials: Mapping[HashName, ScramCredential]) -> None:
        """Create the account; raises AlreadyExists."""
        ...

    async def get_credentials(self, username: str) -> dict[HashName, ScramCredential] | None:
        """The account's credentials by hash name, None if there is no such account."""
        ...

    async def set_credentials(self, username: str, credentials: Mapping[HashName, ScramCredential]) -> bool:
        """Replace all of the account's credentials; False if there is no such account."""
        ...

    async def delete(self, username: str) -> bool:
        """Delete the account with its roster and offline messages, in one transaction; False if absent."""
        ...

    async def exists(self, username: str) -> bool: ...

    async def list_usernames(self, *, limit: int | None = None, after: str | None = None) -> list[str]:
        """Usernames sorted by their UTF-8 bytes (= code point order), those greater than `after` only."""
        ...

    async def count(self) -> int: ...


class RosterStore(Protocol):
    """Rosters (RFC 6121 §2) with their versions (XEP-0237); contacts are bare JID strings."""

    async def get(self, username: str) -> Roster:
        """The whole roster; version 0 and no items for a user who never had one."""
        ...

    async def get_item(self, username: str, contact: str) -> RosterItem | None: ...

    async def put(self, username: str, item: RosterItem) -> int:
        """Insert or replace the item; returns the new, bumped roster version. Raises NoSuchAccount."""
        ...

    async def remove(self, username: str, contact: str) -> int | None:
        """Remove the item; returns the new roster version, None (and no bump) if it was not there."""
        ...

    async def version(self, username: str) -> int: ...


class OfflineStore(Protocol):
    """Messages kept for users who are offline (XEP-0160), oldest first."""

    async def push(self, username: str, stanza: bytes, *, quota: int) -> int:
        """Store the message and return its id; QuotaExceeded if the user already has `quota` messages.

        Raises NoSuchAccount for an unknown user.
        """
        ...

    async def list(self, username: str) -> list[OfflineMessage]:
        """All the user's messages, oldest first (by id)."""
        ...

    async def delete(self, username: str, ids: Sequence[int]) -> None:
        """Delete exactly these messages of this user (those that were delivered)."""
        ...

    async def count(self, username: str) -> int: ...


@dataclass(frozen=True, slots=True)
class Storage:
    """All the repositories of one backend; the server holds one of these."""

    accounts: AccountStore
    rosters: RosterStore
    offline: OfflineStore
