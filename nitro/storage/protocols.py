"""What the core depends on: one Protocol per kind of permanent data, implemented by SQL and caches."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from nitro.storage.models import (
    ArchivePage,
    ArchivePrefs,
    ArchiveQuery,
    ArchiveRow,
    LastActivity,
    OfflineMessage,
    PepItem,
    PepNode,
    Roster,
    RosterItem,
)
from nitro.xmpp.sasl.credentials import HashName, ScramCredential


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
        """Delete the account with all its data (roster, messages, archive, PEP, …) in one transaction."""
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

    async def items_for(self, usernames: Sequence[str], contact: str) -> dict[str, RosterItem]:
        """`contact`'s item in each of these users' rosters, by username; users without one are left
        out. One query for what a login's presence probes ask of every online contact."""
        ...

    async def put(self, username: str, item: RosterItem, *, max_items: int | None = None) -> int:
        """Insert or replace the item; returns the new, bumped roster version. Raises NoSuchAccount, and
        QuotaExceeded for a new item when the roster already holds `max_items` (None: no limit)."""
        ...

    async def remove(self, username: str, contact: str) -> int | None:
        """Remove the item; returns the new roster version, None (and no bump) if it was not there."""
        ...

    async def update(
        self,
        username: str,
        contact: str,
        change: Callable[[RosterItem | None], RosterItem | None],
        *,
        max_items: int | None = None,
    ) -> tuple[RosterItem | None, RosterItem | None, int | None]:
        """Read the item, write `change(item)` (None: remove it), in one transaction that holds the account's
        row lock: nodes changing one roster at once never lose each other's update (a cluster). Returns
        (before, after, new version or None when nothing changed). Raises NoSuchAccount, QuotaExceeded."""
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


class ArchiveStore(Protocol):
    """Each user's message archive (XEP-0313), ordered by arrival; ids are given by the caller (XEP-0359)."""

    async def append(
        self, username: str, *, with_jid: str, stanza: bytes, stanza_id: str, timestamp: datetime
    ) -> None:
        """Archive one message; raises NoSuchAccount (and StorageError for a stanza_id already used)."""
        ...

    async def append_batch(self, rows: Sequence[ArchiveRow]) -> int:
        """Archive these messages in one transaction, in order; rows of accounts that do not exist (any
        more) are skipped. Returns how many were written; StorageError leaves none written."""
        ...

    async def query(self, username: str, query: ArchiveQuery) -> ArchivePage:
        """One page of the messages matching the filters; ItemNotFound if after_id/before_id is unknown."""
        ...

    async def get_prefs(self, username: str) -> ArchivePrefs | None:
        """The user's preferences; None if never set (the config default applies)."""
        ...

    async def set_prefs(self, username: str, prefs: ArchivePrefs) -> None:
        """Replace the user's preferences; raises NoSuchAccount."""
        ...

    async def expire(self, before: datetime) -> int:
        """Retention: delete every user's messages older than `before`; returns how many."""
        ...

    async def count(self, username: str) -> int: ...


class PepStore(Protocol):
    """Each user's PEP nodes (XEP-0163) with their configuration and items."""

    async def get_node(self, username: str, node: str) -> PepNode | None: ...

    async def put_node(self, username: str, node: PepNode) -> None:
        """Create or reconfigure the node (its items stay); raises NoSuchAccount."""
        ...

    async def delete_node(self, username: str, node: str) -> bool:
        """Delete the node with its items; False if there was none."""
        ...

    async def list_nodes(self, username: str) -> list[PepNode]:
        """The user's nodes, sorted by name."""
        ...

    async def publish(
        self, username: str, node: str, item: PepItem, *, max_items: int, max_account_items: int | None = None
    ) -> None:
        """Store the item, replacing one with the same id (it becomes the newest); keep the newest max_items.

        A node that does not exist yet is created with the default configuration and this max_items
        (XEP-0163 §3 auto-create). Raises NoSuchAccount for an unknown user, and QuotaExceeded (storing
        nothing) when the account's nodes would then hold more than `max_account_items` items together.
        """
        ...

    async def retract(self, username: str, node: str, item_id: str) -> bool:
        """Delete one item; False if it was not there."""
        ...

    async def items(
        self,
        username: str,
        node: str,
        *,
        max_items: int | None = None,
        item_ids: Sequence[str] | None = None,
    ) -> list[PepItem]:
        """The node's items, newest first: the newest `max_items`, or those with the given ids."""
        ...


class BlockListStore(Protocol):
    """Each user's block list (XEP-0191): JIDs as given (bare, full or domain)."""

    async def list(self, username: str) -> list[str]:
        """The blocked JIDs, sorted."""
        ...

    async def add(self, username: str, jids: Sequence[str]) -> None:
        """Block these JIDs (already blocked ones are kept); raises NoSuchAccount."""
        ...

    async def remove(self, username: str, jids: Sequence[str]) -> None:
        """Unblock these JIDs (those not blocked are ignored)."""
        ...

    async def clear(self, username: str) -> None: ...


class VCardStore(Protocol):
    """Each user's vcard-temp (XEP-0054) as serialized XML."""

    async def get(self, username: str) -> bytes | None: ...

    async def set(self, username: str, vcard: bytes | None) -> None:
        """Store the vCard, or delete it with None; raises NoSuchAccount when storing."""
        ...


class PrivateStore(Protocol):
    """Private XML storage (XEP-0049); the key is the Clark name "{namespace}localname" of the element."""

    async def get(self, username: str, key: str) -> bytes | None: ...

    async def set(self, username: str, key: str, payload: bytes, *, max_keys: int | None = None) -> None:
        """Store or replace the element under `key`; raises NoSuchAccount, and QuotaExceeded for a new key
        when the account already stores `max_keys` elements (None: no limit)."""
        ...


class LastActivityStore(Protocol):
    """When each account was last online, with the status of its last unavailable presence (XEP-0012)."""

    async def get(self, username: str) -> LastActivity | None:
        """None if the account was never seen going offline (or does not exist)."""
        ...

    async def set(self, username: str, activity: LastActivity) -> None:
        """Replace what is stored; raises NoSuchAccount."""
        ...


@dataclass(frozen=True, slots=True)
class Storage:
    """All the repositories of one backend; the server holds one of these."""

    accounts: AccountStore
    rosters: RosterStore
    offline: OfflineStore
    archive: ArchiveStore
    pep: PepStore
    blocklist: BlockListStore
    vcards: VCardStore
    private: PrivateStore
    last: LastActivityStore
