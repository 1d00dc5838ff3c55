"""Roster items gain `request`: a pending subscription request kept whole until delivered (RFC 6121 §3.1.3).

Revision ID: 0004_subscription_request
Revises: 0003_roster_in_roster
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004_subscription_request"
down_revision: str | None = "0003_roster_in_roster"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("roster_items") as batch:
        batch.add_column(sa.Column("request", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("roster_items") as batch:
        batch.drop_column("request")
