"""The SQL schema as SQLAlchemy Core tables, one definition for SQLite and MariaDB/MySQL (InnoDB, utf8mb4).

`migrations/versions/` must create exactly these tables; a test compares the two.

Key lengths: InnoDB (DYNAMIC rows, the MariaDB 10.2+ default) allows 3072 bytes per index key, and a
utf8mb4 VARCHAR(n) counts 4n bytes, so a 1023-character VARCHAR key does not fit. JID parts are limited in
*bytes* (RFC 7622 §3.2-3.4: 1023 each, so a bare JID is at most 2047 and a full JID 3071), hence:
- usernames are stored as their UTF-8 bytes in VARBINARY(1023): a 1023-byte unique key fits, comparison
  is exact (no collation folding "A" into "a" or "é" into "e") and sorts the same on every backend;
- a roster contact may be up to 3071 bytes, too long next to the account id in one key, so the primary
  key uses `contact_key` = SHA-256 of the contact's UTF-8 bytes (32 bytes) and the contact itself sits in
  an unindexed VARBINARY(3071).
Rows refer to accounts by a surrogate integer id, with ON DELETE CASCADE as a safety net (the SQL store
also deletes the children explicitly, so SQLite without `PRAGMA foreign_keys` cannot leave orphans).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    true,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

USERNAME_MAX_BYTES = 1023  # RFC 7622 §3.3.1: a localpart is at most 1023 octets
CONTACT_MAX_BYTES = 3071  # RFC 7622 §3.1: a JID is at most 3071 octets (a bare JID at most 2047)

_MYSQL = ("mysql", "mariadb")

# Every table is InnoDB in utf8mb4 with a binary collation: text compares exactly, as it does in SQLite.
TABLE_OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}
# Ids are never reused after a delete, as with InnoDB AUTO_INCREMENT (for tables with an id column).
NEVER_REUSE_IDS: dict[str, Any] = {"sqlite_autoincrement": True}

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def varbinary(length: int) -> TypeEngine[bytes]:
    """Bytes of at most `length`: VARBINARY on MariaDB (indexable, unlike BLOB), BLOB on SQLite."""
    return LargeBinary(length).with_variant(mysql.VARBINARY(length), *_MYSQL)


def fixed_binary(length: int) -> TypeEngine[bytes]:
    """Exactly `length` bytes (hashes): BINARY on MariaDB, BLOB on SQLite."""
    return LargeBinary(length).with_variant(mysql.BINARY(length), *_MYSQL)


def big_id() -> TypeEngine[int]:
    """An auto-increment id: BIGINT on MariaDB; INTEGER on SQLite, where only that is a rowid alias."""
    return BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored as naive UTC (neither SQLite nor MariaDB DATETIME keep a zone)."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in _MYSQL:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))  # keep microseconds
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", varbinary(USERNAME_MAX_BYTES), nullable=False, unique=True),  # UTF-8 of the localpart
    **TABLE_OPTIONS,
    **NEVER_REUSE_IDS,
)

# RFC 5802 §3: what the server keeps per hash, never the password.
scram_credentials = Table(
    "scram_credentials",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("hash_name", String(16), primary_key=True),  # IANA name: "SHA-1", "SHA-256"
    Column("salt", LargeBinary, nullable=False),
    Column("iterations", Integer, nullable=False),
    Column("stored_key", LargeBinary, nullable=False),
    Column("server_key", LargeBinary, nullable=False),
    **TABLE_OPTIONS,
)

# XEP-0237 roster versioning: one counter per account, bumped in the transaction that changes the roster.
roster_versions = Table(
    "roster_versions",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("version", BigInteger, nullable=False),
    **TABLE_OPTIONS,
)

roster_items = Table(
    "roster_items",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("contact_key", fixed_binary(32), primary_key=True),  # SHA-256 of `contact`, see the module doc
    Column("contact", varbinary(CONTACT_MAX_BYTES), nullable=False),  # UTF-8 of the bare JID
    Column("name", Text, nullable=True),
    Column("subscription", String(4), nullable=False),
    Column("ask", Boolean, nullable=False),
    Column("pending_in", Boolean, nullable=False),
    Column("approved", Boolean, nullable=False),
    Column("groups", Text, nullable=False),  # JSON array of group names
    Column("in_roster", Boolean, nullable=False, server_default=true()),  # see RosterItem.in_roster
    Column("request", LargeBinary, nullable=True),  # see RosterItem.request (BLOB: up to 64 KiB)
    CheckConstraint("subscription IN ('none', 'to', 'from', 'both')", name="subscription"),
    **TABLE_OPTIONS,
)

offline_messages = Table(
    "offline_messages",
    metadata,
    Column("id", big_id(), primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    # MEDIUMBLOB (16 MiB) on MariaDB: a plain BLOB stops at 64 KiB, less than a large stanza.
    Column("stanza", LargeBinary().with_variant(mysql.MEDIUMBLOB(), *_MYSQL), nullable=False),
    Column("stored_at", UTCDateTime(), nullable=False),
    Index("ix_offline_messages_account_id_id", "account_id", "id"),
    **TABLE_OPTIONS,
    **NEVER_REUSE_IDS,
)

# --- issue 3: message archive, PEP, block list, vCard, private XML ---------------------------------------

ARCHIVE_ID_MAX = 128  # characters of a XEP-0359 stanza id (the server makes them, far shorter)
PEP_NAME_MAX_BYTES = 1023  # XEP-0060 node names and item ids, as UTF-8 in a unique key
PRIVATE_KEY_MAX_BYTES = 3071  # a Clark name "{namespace}localname"; the key column holds its SHA-256


def _mediumblob() -> TypeEngine[bytes]:
    """Up to 16 MiB on MariaDB (a plain BLOB stops at 64 KiB, less than a large stanza)."""
    return LargeBinary().with_variant(mysql.MEDIUMBLOB(), *_MYSQL)


# XEP-0313: `id` orders the archive (it only grows); the page queries walk (account_id, id) or
# (account_id, with_key, id) in either direction; `with_key` = SHA-256 of `with_jid`.
archive_messages = Table(
    "archive_messages",
    metadata,
    Column("id", big_id(), primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("stanza_id", String(ARCHIVE_ID_MAX), nullable=False),  # XEP-0359 <stanza-id id=…/>
    Column("with_key", fixed_binary(32), nullable=False),
    Column("with_jid", varbinary(CONTACT_MAX_BYTES), nullable=False),  # UTF-8 of the bare JID
    Column("timestamp", UTCDateTime(), nullable=False),
    Column("stanza", _mediumblob(), nullable=False),
    Index("ix_archive_messages_account_id_id", "account_id", "id"),
    Index("ix_archive_messages_account_id_with_key_id", "account_id", "with_key", "id"),
    Index("ix_archive_messages_account_id_timestamp", "account_id", "timestamp"),
    Index("ix_archive_messages_timestamp", "timestamp"),  # retention deletes across all accounts
    # Ids we make begin with their time: stanza_id first puts a batch's new keys at the end of the
    # B-tree, not one page per account (the lookups give both columns).
    Index("uq_archive_messages_stanza_id_account_id", "stanza_id", "account_id", unique=True),
    **TABLE_OPTIONS,
    **NEVER_REUSE_IDS,
)

# XEP-0313 §6: absent row = the configured default.
archive_prefs = Table(
    "archive_prefs",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("default_mode", String(6), nullable=False),
    Column("always_jids", Text, nullable=False),  # JSON array of JIDs
    Column("never_jids", Text, nullable=False),  # JSON array of JIDs
    CheckConstraint("default_mode IN ('always', 'never', 'roster')", name="default_mode"),
    **TABLE_OPTIONS,
)

pep_nodes = Table(
    "pep_nodes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("name", varbinary(PEP_NAME_MAX_BYTES), nullable=False),  # UTF-8 of the node name
    Column("access_model", String(9), nullable=False),
    Column("max_items", Integer, nullable=False),
    Column("persist_items", Boolean, nullable=False),
    Column("whitelist", Text, nullable=False),  # JSON array of bare JIDs
    Index("uq_pep_nodes_account_id_name", "account_id", "name", unique=True),
    CheckConstraint("access_model IN ('presence', 'open', 'whitelist', 'roster')", name="access_model"),
    **TABLE_OPTIONS,
    **NEVER_REUSE_IDS,
)

# `id` orders a node's items by publication (a republished item gets a new, greater id).
pep_items = Table(
    "pep_items",
    metadata,
    Column("id", big_id(), primary_key=True, autoincrement=True),
    Column("node_id", Integer, ForeignKey("pep_nodes.id", ondelete="CASCADE"), nullable=False),
    Column("item_id", varbinary(PEP_NAME_MAX_BYTES), nullable=False),  # UTF-8 of the item id
    Column("payload", _mediumblob(), nullable=False),
    Column("published_at", UTCDateTime(), nullable=False),
    Index("ix_pep_items_node_id_id", "node_id", "id"),
    Index("uq_pep_items_node_id_item_id", "node_id", "item_id", unique=True),
    **TABLE_OPTIONS,
    **NEVER_REUSE_IDS,
)

# XEP-0191: `jid_key` = SHA-256 of `jid`, as for roster contacts.
blocked_jids = Table(
    "blocked_jids",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("jid_key", fixed_binary(32), primary_key=True),
    Column("jid", varbinary(CONTACT_MAX_BYTES), nullable=False),  # UTF-8 of the JID as blocked
    **TABLE_OPTIONS,
)

# XEP-0054 vcard-temp, one per account.
vcards = Table(
    "vcards",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("vcard", _mediumblob(), nullable=False),
    **TABLE_OPTIONS,
)

# XEP-0012: when the account's last resource went offline, and the status of that unavailable presence.
last_activity = Table(
    "last_activity",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("seen_at", UTCDateTime(), nullable=False),
    Column("status", Text, nullable=False),
    **TABLE_OPTIONS,
)

# XEP-0049: `key_hash` = SHA-256 of the UTF-8 Clark name kept in `key`.
private_xml = Table(
    "private_xml",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("key_hash", fixed_binary(32), primary_key=True),
    Column("key", varbinary(PRIVATE_KEY_MAX_BYTES), nullable=False),
    Column("payload", _mediumblob(), nullable=False),
    **TABLE_OPTIONS,
)
