"""Durable storage behind typed repositories; the SQL backend lives in `nitro.storage.sql`."""

from nitro.storage.errors import AlreadyExists, NoSuchAccount, QuotaExceeded, StorageError, StorageUnavailable
from nitro.storage.models import OfflineMessage, Roster, RosterItem, Subscription
from nitro.storage.protocols import AccountStore, OfflineStore, RosterStore, Storage

__all__ = [
    "AccountStore",
    "AlreadyExists",
    "NoSuchAccount",
    "OfflineMessage",
    "OfflineStore",
    "QuotaExceeded",
    "Roster",
    "RosterItem",
    "RosterStore",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "Subscription",
]
