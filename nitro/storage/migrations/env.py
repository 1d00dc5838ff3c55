"""Alembic environment: migrates the connection handed over by `nitro.storage.sql.upgrade_schema`.

Offline (`sql=True`) mode renders the DDL for `config.attributes["dialect_name"]` (for DBAs and tests).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from nitro.storage.schema import metadata

config = context.config

if context.is_offline_mode():
    context.configure(
        dialect_name=config.attributes.get("dialect_name", "mysql"),
        target_metadata=metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("run Nitro's migrations through nitro.storage.sql.upgrade_schema()")
    # Batch mode lets later migrations ALTER tables on SQLite (it recreates the table); SQLite's DDL
    # is transactional, Alembic just does not assume it.
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        transactional_ddl=True if sqlite else None,
    )
    with context.begin_transaction():
        context.run_migrations()
