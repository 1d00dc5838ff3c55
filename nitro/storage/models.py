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
    # False while the item only records a stranger's pending request: the user never added the contact,
    # so it is neither shown nor pushed (RFC 6121 §3.1.3, Appendix A.1 "None + Pending In").
    in_roster: bool = True
    # While pending_in: the contact's subscription request as received (self-contained XML), delivered
    # whole, extended content included, when the user next comes online (RFC 6121 §3.1.3).
    request: bytes | None = None


@dataclass(frozen=True, slots=True)
class LastActivity:
    """When an account's last available resource went offline, and the status it left (XEP-0012 §4)."""

    seen_at: datetime  # timezone-aware, UTC
    status: str = ""


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


# ---------------------------------------------------------------------------------------------------------
# Message archive (XEP-0313 MAM, XEP-0059 RSM, XEP-0359 stanza ids).


@dataclass(frozen=True, slots=True)
class ArchivedMessage:
    """One archived message of a user's archive."""

    id: str  # the XEP-0359 stanza-id / MAM result id: opaque, unique per archive
    with_jid: str  # bare JID of the other party
    timestamp: datetime  # UTC, aware
    stanza: bytes  # the message as archived: self-contained XML (xmlns='jabber:client' declared)


@dataclass(frozen=True, slots=True)
class ArchiveRow:
    """One message to append to `username`'s archive (a batch of these is one transaction)."""

    username: str
    with_jid: str  # bare JID of the other party
    stanza: bytes
    stanza_id: str  # the XEP-0359 id, given by the caller
    timestamp: datetime  # UTC, aware


@dataclass(frozen=True, slots=True)
class ArchiveQuery:
    """The filters and paging of one archive query (XEP-0313 §4.1, XEP-0059 §2)."""

    with_jid: str | None = None  # bare JID (matches with_jid); full-JID 'with' filtering is the module's job
    start: datetime | None = None  # inclusive
    end: datetime | None = None  # inclusive
    after_id: str | None = None  # RSM <after> (also MAM after-id)
    before_id: str | None = None  # RSM <before> / MAM before-id; "" (empty <before/>) means "the last page"
    ids: tuple[str, ...] | None = None  # MAM ids filter (XEP-0313 §4.1.4)
    limit: int = 50
    # Count the result (RSM <count/> and <first index/>), up to a cap past which both are None:
    # XEP-0059 §2.2 makes the count optional, and counting a million rows is a walk of the index.
    with_count: bool = True


@dataclass(frozen=True, slots=True)
class ArchivePage:
    """One page of an archive query's result."""

    messages: tuple[ArchivedMessage, ...]  # always in chronological order
    complete: bool  # no more results in the direction of paging
    count: int | None  # total matching the filters (ignoring after/before/limit); None: not counted
    first_index: int | None  # RSM index of messages[0] within the full result (None if empty)


ArchiveDefault = Literal["always", "never", "roster"]


@dataclass(frozen=True, slots=True)
class ArchivePrefs:
    """A user's archiving preferences (XEP-0313 §6)."""

    default: ArchiveDefault
    always: tuple[str, ...] = ()
    never: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------------------
# Personal eventing (XEP-0163 PEP on XEP-0060 nodes).

AccessModel = Literal["presence", "open", "whitelist", "roster"]


@dataclass(frozen=True, slots=True)
class PepNode:
    """A PEP node of a user and its configuration (XEP-0060 §16.4.3)."""

    name: str
    access_model: AccessModel = "presence"
    max_items: int = 1
    persist_items: bool = True
    whitelist: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PepItem:
    """A published item of a PEP node."""

    id: str
    payload: bytes  # the single payload element as self-contained XML
    published_at: datetime  # UTC, aware
