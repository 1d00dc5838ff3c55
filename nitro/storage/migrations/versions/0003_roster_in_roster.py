"""Roster items gain `in_roster`: a stranger's pending request is stored but not on the user's roster.

Revision ID: 0003_roster_in_roster
Revises: 0002_im_features
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003_roster_in_roster"
down_revision: str | None = "0002_im_features"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("roster_items") as batch:
        batch.add_column(sa.Column("in_roster", sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("roster_items") as batch:
        batch.drop_column("in_roster")
