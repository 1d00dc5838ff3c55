"""IM features of issue 3: message archive with preferences, PEP nodes and items, block lists, vCards,
private XML.

Written by hand to match nitro/storage/schema.py as of this revision; a migration never imports the
live schema, which will move on.

Revision ID: 0002_im_features
Revises: 0001_initial
Create Date: 2026-11-29
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002_im_features"
down_revision: str | None = "0001_initial"
branch_labels: str | None = None
depends_on: str | None = None

_MYSQL = ("mysql", "mariadb")
_OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def _varbinary(length: int) -> sa.types.TypeEngine[bytes]:
    return sa.LargeBinary(length).with_variant(mysql.VARBINARY(length), *_MYSQL)


def _sha256() -> sa.types.TypeEngine[bytes]:
    return sa.LargeBinary(32).with_variant(mysql.BINARY(32), *_MYSQL)


def _mediumblob() -> sa.types.TypeEngine[bytes]:
    return sa.LargeBinary().with_variant(mysql.MEDIUMBLOB(), *_MYSQL)


def _datetime() -> sa.types.TypeEngine[Any]:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), *_MYSQL)


def _big_id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _account_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["account_id"], ["accounts.id"], name=op.f(f"fk_{table}_account_id_accounts"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "archive_messages",
        sa.Column("id", _big_id(), nullable=False, autoincrement=True),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("stanza_id", sa.String(128), nullable=False),
        sa.Column("with_key", _sha256(), nullable=False),
        sa.Column("with_jid", _varbinary(3071), nullable=False),
        sa.Column("timestamp", _datetime(), nullable=False),
        sa.Column("stanza", _mediumblob(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_archive_messages")),
        _account_fk("archive_messages"),
        sqlite_autoincrement=True,
        **_OPTIONS,
    )
    op.create_index(op.f("ix_archive_messages_account_id_id"), "archive_messages", ["account_id", "id"])
    op.create_index(
        op.f("ix_archive_messages_account_id_with_key_id"),
        "archive_messages",
        ["account_id", "with_key", "id"],
    )
    op.create_index(
        op.f("ix_archive_messages_account_id_timestamp"), "archive_messages", ["account_id", "timestamp"]
    )
    op.create_index(op.f("ix_archive_messages_timestamp"), "archive_messages", ["timestamp"])
    op.create_index(
        op.f("uq_archive_messages_account_id_stanza_id"),
        "archive_messages",
        ["account_id", "stanza_id"],
        unique=True,
    )

    op.create_table(
        "archive_prefs",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("default_mode", sa.String(6), nullable=False),
        sa.Column("always_jids", sa.Text(), nullable=False),
        sa.Column("never_jids", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_archive_prefs")),
        _account_fk("archive_prefs"),
        sa.CheckConstraint(
            "default_mode IN ('always', 'never', 'roster')", name=op.f("ck_archive_prefs_default_mode")
        ),
        **_OPTIONS,
    )

    op.create_table(
        "pep_nodes",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("name", _varbinary(1023), nullable=False),
        sa.Column("access_model", sa.String(9), nullable=False),
        sa.Column("max_items", sa.Integer(), nullable=False),
        sa.Column("persist_items", sa.Boolean(), nullable=False),
        sa.Column("whitelist", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pep_nodes")),
        _account_fk("pep_nodes"),
        sa.CheckConstraint(
            "access_model IN ('presence', 'open', 'whitelist', 'roster')",
            name=op.f("ck_pep_nodes_access_model"),
        ),
        sqlite_autoincrement=True,
        **_OPTIONS,
    )
    op.create_index(op.f("uq_pep_nodes_account_id_name"), "pep_nodes", ["account_id", "name"], unique=True)

    op.create_table(
        "pep_items",
        sa.Column("id", _big_id(), nullable=False, autoincrement=True),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("item_id", _varbinary(1023), nullable=False),
        sa.Column("payload", _mediumblob(), nullable=False),
        sa.Column("published_at", _datetime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pep_items")),
        sa.ForeignKeyConstraint(
            ["node_id"], ["pep_nodes.id"], name=op.f("fk_pep_items_node_id_pep_nodes"), ondelete="CASCADE"
        ),
        sqlite_autoincrement=True,
        **_OPTIONS,
    )
    op.create_index(op.f("ix_pep_items_node_id_id"), "pep_items", ["node_id", "id"])
    op.create_index(op.f("uq_pep_items_node_id_item_id"), "pep_items", ["node_id", "item_id"], unique=True)

    op.create_table(
        "blocked_jids",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("jid_key", _sha256(), nullable=False),
        sa.Column("jid", _varbinary(3071), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "jid_key", name=op.f("pk_blocked_jids")),
        _account_fk("blocked_jids"),
        **_OPTIONS,
    )

    op.create_table(
        "vcards",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("vcard", _mediumblob(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_vcards")),
        _account_fk("vcards"),
        **_OPTIONS,
    )

    op.create_table(
        "private_xml",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("key_hash", _sha256(), nullable=False),
        sa.Column("key", _varbinary(3071), nullable=False),
        sa.Column("payload", _mediumblob(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "key_hash", name=op.f("pk_private_xml")),
        _account_fk("private_xml"),
        **_OPTIONS,
    )


def downgrade() -> None:
    for table in (
        "private_xml",
        "vcards",
        "blocked_jids",
        "pep_items",
        "pep_nodes",
        "archive_prefs",
        "archive_messages",
    ):
        op.drop_table(table)
