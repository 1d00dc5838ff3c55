"""Initial schema: accounts with SCRAM credentials, rosters with versions, offline messages.

Written by hand to match nitro/storage/schema.py as of this revision (see there for the key lengths);
a migration never imports the live schema, which will move on.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001_initial"
down_revision: str | None = None
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


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("username", _varbinary(1023), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("username", name=op.f("uq_accounts_username")),
        sqlite_autoincrement=True,
        **_OPTIONS,
    )
    op.create_table(
        "scram_credentials",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("hash_name", sa.String(16), nullable=False),
        sa.Column("salt", sa.LargeBinary(), nullable=False),
        sa.Column("iterations", sa.Integer(), nullable=False),
        sa.Column("stored_key", sa.LargeBinary(), nullable=False),
        sa.Column("server_key", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "hash_name", name=op.f("pk_scram_credentials")),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_scram_credentials_account_id_accounts"),
            ondelete="CASCADE",
        ),
        **_OPTIONS,
    )
    op.create_table(
        "roster_versions",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_roster_versions")),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_roster_versions_account_id_accounts"),
            ondelete="CASCADE",
        ),
        **_OPTIONS,
    )
    op.create_table(
        "roster_items",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("contact_key", sa.LargeBinary(32).with_variant(mysql.BINARY(32), *_MYSQL), nullable=False),
        sa.Column("contact", _varbinary(3071), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("subscription", sa.String(4), nullable=False),
        sa.Column("ask", sa.Boolean(), nullable=False),
        sa.Column("pending_in", sa.Boolean(), nullable=False),
        sa.Column("approved", sa.Boolean(), nullable=False),
        sa.Column("groups", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "contact_key", name=op.f("pk_roster_items")),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_roster_items_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "subscription IN ('none', 'to', 'from', 'both')", name=op.f("ck_roster_items_subscription")
        ),
        **_OPTIONS,
    )
    op.create_table(
        "offline_messages",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False, autoincrement=True
        ),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("stanza", sa.LargeBinary().with_variant(mysql.MEDIUMBLOB(), *_MYSQL), nullable=False),
        sa.Column("stored_at", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), *_MYSQL), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_offline_messages")),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_offline_messages_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sqlite_autoincrement=True,
        **_OPTIONS,
    )
    op.create_index(op.f("ix_offline_messages_account_id_id"), "offline_messages", ["account_id", "id"])


def downgrade() -> None:
    for table in ("offline_messages", "roster_items", "roster_versions", "scram_credentials", "accounts"):
        op.drop_table(table)
