"""The archive on SQL: its unique key (stanza_id, account_id), migrated from (account_id, stanza_id) with the
rows kept, still one id per archive, and the lookups by id found through it (SQLite and MariaDB); and the
settings of a SQLite file's writing connection, which commits the archive's batches.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlbackends import create_test_database

from nitro.storage import ArchiveQuery, StorageError
from nitro.storage.schema import archive_messages
from nitro.storage.sql import (
    WRITER_CACHE_KIB,
    WRITER_CHECKPOINT_PAGES,
    alembic_config,
    create_engine,
    open_database,
    open_sql_storage,
    upgrade_schema,
)
from nitro.storage.sql_archive import SqlArchiveStore, sqlite_time_text
from nitro.storage.sql_base import WRITE, Database

T0 = datetime(2026, 12, 6, 1, 2, 3, 456789, tzinfo=UTC)
NEW_KEY = "uq_archive_messages_stanza_id_account_id"
OLD_KEY = "uq_archive_messages_account_id_stanza_id"


@pytest.fixture(params=["sqlite", "mariadb"])
def fresh_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no tables yet) on each backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'nitro.db'}"
        return
    server = create_test_database(prefix="nitro_test_keys")
    try:
        yield server.dsn
    finally:
        server.drop()


async def _migrate_to(engine: AsyncEngine, revision: str) -> None:
    def upgrade(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.execution_options(**{WRITE: True}).begin() as conn:
        await conn.run_sync(upgrade)


async def _index_names(engine: AsyncEngine) -> set[str]:
    def names(connection: Connection) -> set[str]:
        return {index["name"] or "" for index in inspect(connection).get_indexes("archive_messages")}

    async with engine.connect() as conn:
        return await conn.run_sync(names)


async def test_the_migration_keeps_the_rows_and_the_key(fresh_dsn: str) -> None:
    engine = create_engine(fresh_dsn)
    try:
        await _migrate_to(engine, "0005_last_activity")
        assert OLD_KEY in await _index_names(engine)
        async with engine.execution_options(**{WRITE: True}).begin() as conn:
            await conn.execute(
                text("INSERT INTO accounts (username) VALUES (:a), (:b)"), {"a": b"juliet", "b": b"romeo"}
            )
            for user in ("juliet", "romeo"):  # the same id in two archives, as an import may bring
                await conn.execute(
                    text(
                        "INSERT INTO archive_messages (account_id, stanza_id, with_key, with_jid, timestamp,"
                        " stanza) SELECT id, 'shared-id', :key, :jid, :stamp, :stanza FROM accounts"
                        " WHERE username = :user"
                    ),
                    {
                        "key": b"k" * 32,
                        "jid": b"nurse@example.org",
                        "stamp": T0.replace(tzinfo=None),
                        "stanza": f"<message to='{user}@example.org'/>".encode(),
                        "user": user.encode(),
                    },
                )
        await upgrade_schema(engine)
        names = await _index_names(engine)
        assert NEW_KEY in names
        assert OLD_KEY not in names
    finally:
        await engine.dispose()

    async with open_sql_storage(fresh_dsn) as storage:
        for user in ("juliet", "romeo"):
            page = await storage.archive.query(user, ArchiveQuery(ids=("shared-id",)))
            assert [m.stanza for m in page.messages] == [f"<message to='{user}@example.org'/>".encode()]
        with pytest.raises(StorageError):  # still one message per id in an archive
            await storage.archive.append(
                "juliet", with_jid="nurse@example.org", stanza=b"<m/>", stanza_id="shared-id", timestamp=T0
            )
        await storage.accounts.create("nurse", {})
        await storage.archive.append(  # the same id in a third archive is fine
            "nurse", with_jid="juliet@example.org", stanza=b"<m/>", stanza_id="shared-id", timestamp=T0
        )
        assert (await storage.archive.query("nurse", ArchiveQuery(after_id="shared-id"))).messages == ()
        assert await storage.archive.count("juliet") == 1


async def test_lookups_by_id_use_the_key(tmp_path: Path) -> None:
    db_path = tmp_path / "nitro.db"
    dsn = f"sqlite+aiosqlite:///{db_path}"
    async with open_sql_storage(dsn) as storage:
        for user in ("juliet", "romeo"):
            await storage.accounts.create(user, {})
            for n in range(50):
                await storage.archive.append(
                    user,
                    with_jid="nurse@example.org",
                    stanza=b"<m/>",
                    stanza_id=f"{n:04d}",
                    timestamp=T0 + timedelta(seconds=n),
                )
    engine = create_engine(dsn)
    statements: list[tuple[str, Any]] = []

    def record(_conn: object, _cursor: object, statement: str, parameters: Any, *_rest: object) -> None:
        if "stanza_id =" in statement or "stanza_id IN" in statement:
            statements.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        archive = SqlArchiveStore(Database(engine))
        assert [m.id for m in (await archive.query("romeo", ArchiveQuery(after_id="0047"))).messages] == [
            "0048",
            "0049",
        ]
        assert len((await archive.query("romeo", ArchiveQuery(before_id="0002"))).messages) == 2
        assert len((await archive.query("juliet", ArchiveQuery(ids=("0003", "0009")))).messages) == 2
    finally:
        await engine.dispose()
    assert len(statements) == 3
    connection = sqlite3.connect(db_path)
    try:
        for statement, parameters in statements:
            plan = " ".join(
                row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
            )
            assert NEW_KEY in plan, (plan, statement)
    finally:
        connection.close()


async def test_the_writing_connection_has_a_larger_cache_and_fewer_checkpoints(tmp_path: Path) -> None:
    async with open_database(f"sqlite+aiosqlite:///{tmp_path / 'nitro.db'}") as db:
        assert db.write_engine is not None

        async def settings(engine: AsyncEngine) -> list[object]:
            async with engine.connect() as conn:
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                assert driver is not None
                return [
                    (await driver.execute_fetchall(f"PRAGMA {name}"))[0][0]
                    for name in ("cache_size", "wal_autocheckpoint", "synchronous", "journal_mode")
                ]

        # still durable at each commit: synchronous=FULL (2) in WAL mode
        assert await settings(db.write_engine) == [-WRITER_CACHE_KIB, WRITER_CHECKPOINT_PAGES, 2, "wal"]
        assert await settings(db.engine) == [-2000, 1000, 2, "wal"]  # readers: SQLite's defaults


@pytest.mark.parametrize(
    "moment",
    [
        T0,
        T0.replace(microsecond=0),  # a whole second: still six decimals
        T0.replace(second=0, microsecond=1),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # a year of three digits: padded
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 3, 29, 2, 30, 0, 5, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),  # the day and year before in UTC
        datetime(2026, 12, 31, 23, 59, 59, 500000, tzinfo=timezone(-timedelta(hours=10))),
    ],
)
def test_a_row_time_is_stored_as_sqlalchemy_stores_it(moment: datetime) -> None:
    dialect = sqlite.dialect()
    processor = archive_messages.c.timestamp.type.dialect_impl(dialect).bind_processor(dialect)
    assert processor is not None
    assert sqlite_time_text(moment) == processor(moment)


def test_a_naive_row_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        sqlite_time_text(datetime(2026, 12, 6, 1, 2, 3))  # the mistake under test
