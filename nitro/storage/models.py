"""Values the storage repositories take and return: frozen dataclasses, independent of any backend."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Subscription = Literal["none", "to", "from", "both"]


@dataclass(frozen=True, slots=True)
class RosterItem:
    """One contact in a user's roster (RFC 6121 §2.1.2)."""

    jid: str  # bare JID of the contact
    name: str | None = None
    subscription: Subscription = "none"
    ask: bool = (
        False  # we sent subscribe and await the answer (RFC 6121 §2.1.2.2 ask="subscribe", "pending out")
    )
    pending_in: bool = (
        False  # the contact asked to subscribe to us, not yet answered (RFC 6121 §3.1.3 "pending in")
    )
    approved: bool = False  # pre-approved subscription request (RFC 6121 §3.4)
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Roster:
    """A whole roster with its version (XEP-0237: the version increases with every change)."""

    version: int
    items: tuple[RosterItem, ...]


@dataclass(frozen=True, slots=True)
class OfflineMessage:
    """A message stored for a user who was offline (XEP-0160)."""

    id: int
    stanza: bytes  # the serialized <message/> as stored, already carrying its delay stamp (XEP-0203)
    stored_at: datetime  # timezone-aware, UTC
