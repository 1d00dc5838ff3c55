"""The archive's unique key on (stanza_id, account_id) instead of (account_id, stanza_id): the same constraint
and the same lookups, but new ids begin with their time, so a batch of new rows goes to the end of this
index's B-tree (a few pages) instead of one page per account (one more page for each row's transaction).

Written by hand to match nitro/storage/schema.py as of this revision; a migration never imports the
live schema, which will move on. The new index is built before the old one goes: the key is never unguarded.

Revision ID: 0006_archive_stanza_id_first
Revises: 0005_last_activity
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision: str = "0006_archive_stanza_id_first"
down_revision: str | None = "0005_last_activity"
branch_labels: str | None = None
depends_on: str | None = None

_TABLE = "archive_messages"
_OLD = "uq_archive_messages_account_id_stanza_id"
_NEW = "uq_archive_messages_stanza_id_account_id"


def upgrade() -> None:
    op.create_index(op.f(_NEW), _TABLE, ["stanza_id", "account_id"], unique=True)
    op.drop_index(op.f(_OLD), table_name=_TABLE)


def downgrade() -> None:
    op.create_index(op.f(_OLD), _TABLE, ["account_id", "stanza_id"], unique=True)
    op.drop_index(op.f(_NEW), table_name=_TABLE)
