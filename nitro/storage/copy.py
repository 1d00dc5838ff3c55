"""`nitro db copy`: every table of one Nitro database into another (typically SQLite → MariaDB), in
batches, ids kept, then the row counts of both compared table by table.

The source is read in one transaction, so the copy is a consistent snapshot even while a server writes
to it (SQLite WAL); writes after that snapshot are not copied: stop the server for the final copy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Table, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from nitro.config import StorageSection
from nitro.storage.errors import StorageError
from nitro.storage.schema import metadata
from nitro.storage.sql import alembic_config, create_engine, upgrade_schema
from nitro.storage.sql_base import WRITE, translate_errors
from nitro.storage.sql_mysql import ensure_database, is_mysql

log = logging.getLogger(__name__)

TABLES: tuple[Table, ...] = tuple(metadata.sorted_tables)  # parents before children


class CopyError(StorageError):
    """The copy cannot start or did not produce an equal database; the message says what to do."""


@dataclass(frozen=True, slots=True)
class TableCount:
    table: str
    source: int
    target: int


def _revisions(connection: Connection) -> set[str]:
    return set(MigrationContext.configure(connection).get_current_heads())


async def _counts(conn: AsyncConnection) -> dict[str, int]:
    counts = {}
    for table in TABLES:
        counts[table.name] = int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
    return counts


async def _copy_table(
    source: AsyncConnection, target: AsyncEngine, table: Table, batch: int, progress: Callable[[str], None]
) -> int:
    query = select(table).order_by(*table.primary_key.columns)
    copied = 0
    result = await source.stream(query.execution_options(yield_per=batch))
    async for rows in result.partitions(batch):
        async with target.execution_options(**{WRITE: True}).begin() as conn:
            await conn.execute(insert(table), [row._asdict() for row in rows])
        copied += len(rows)
        progress(f"{table.name}: {copied} rows")
    return copied


async def copy_database(
    source_dsn: str,
    target_dsn: str,
    *,
    force: bool = False,
    batch: int = 1000,
    pool: StorageSection | None = None,
    progress: Callable[[str], None] = log.info,
) -> list[TableCount]:
    """Copy every Nitro table from `source_dsn` to `target_dsn` (migrated and created if missing).

    Refuses a target that holds any row unless `force`, which empties it first. Raises CopyError when
    the source is not at this Nitro's schema revision or when the counts differ afterwards; returns the
    per-table counts otherwise.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    settings = pool or StorageSection(query_timeout=600.0)  # a large batch may take a while to insert
    source = create_engine(source_dsn, create_dirs=False, pool=settings)
    target = create_engine(target_dsn, pool=settings)
    try:
        with translate_errors():
            if is_mysql(target.url):
                await ensure_database(target.url, settings)
            await upgrade_schema(target)
            async with source.connect() as src:  # one read transaction: a consistent snapshot
                heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
                found = await src.run_sync(_revisions)
                if found != heads:
                    raise CopyError(
                        f"the source is at schema revision {sorted(found) or 'none'}, this Nitro at "
                        f"{sorted(heads)}: run `nitro db upgrade` on it first (or check the source DSN)"
                    )
                expected = await _counts(src)
                await _prepare_target(target, force)
                for table in TABLES:
                    await _copy_table(src, target, table, batch, progress)
            async with target.connect() as conn:
                found_counts = await _counts(conn)
    finally:
        await source.dispose()
        await target.dispose()
    counts = [TableCount(name, expected[name], found_counts[name]) for name in expected]
    wrong = [c for c in counts if c.source != c.target]
    if wrong:
        details = ", ".join(f"{c.table}: {c.source} in the source, {c.target} in the target" for c in wrong)
        raise CopyError(f"row counts differ after the copy: {details}")
    return counts


async def _prepare_target(target: AsyncEngine, force: bool) -> None:
    async with target.connect() as conn:
        nonempty = {name: n for name, n in (await _counts(conn)).items() if n}
    if not nonempty:
        return
    if not force:
        listed = ", ".join(f"{name} ({n} rows)" for name, n in nonempty.items())
        raise CopyError(f"the target is not empty: {listed}; use --force to empty it first")
    async with target.execution_options(**{WRITE: True}).begin() as conn:
        for table in reversed(TABLES):  # children first
            await conn.execute(delete(table))
    log.warning("emptied the target's tables: %s", ", ".join(nonempty))
