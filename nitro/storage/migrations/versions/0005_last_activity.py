"""Last activity (XEP-0012): when each account was last online, with its last unavailable status.

Written by hand to match nitro/storage/schema.py as of this revision; a migration never imports the
live schema, which will move on.

Revision ID: 0005_last_activity
Revises: 0004_subscription_request
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0005_last_activity"
down_revision: str | None = "0004_subscription_request"
branch_labels: str | None = None
depends_on: str | None = None

_MYSQL = ("mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "last_activity",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("seen_at", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), *_MYSQL), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_last_activity_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_last_activity")),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )


def downgrade() -> None:
    op.drop_table("last_activity")
