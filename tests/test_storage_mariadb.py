"""What is particular to MariaDB: utf8mb4 round trips, exact JID comparison, strict mode, the schema the
migrations build, concurrent writers and nodes, reconnecting, and the `[storage]` pool keys."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlbackends import MariaDB, SqlBackend, create_test_database

from nitro.config import ConfigError, StorageSection, parse_config
from nitro.storage import AlreadyExists, ArchiveQuery, RosterItem, StorageUnavailable
from nitro.storage.schema import metadata
from nitro.storage.sql import create_engine, open_sql_storage
from nitro.storage.sql_mysql import MIGRATION_LOCK, ensure_database

FOUR_BYTE = "𝄞 🎸😀 𠜎 🏳️‍🌈"  # astral-plane characters: utf8mb4, not MySQL's 3-byte "utf8"


async def test_four_byte_characters_round_trip(mariadb_backend: SqlBackend) -> None:
    async with open_sql_storage(mariadb_backend.dsn) as storage:
        user = f"jüliet{FOUR_BYTE[:2]}"
        await storage.accounts.create(user, {})
        item = RosterItem(f"{FOUR_BYTE[3]}@example.org", name=f"Romeo {FOUR_BYTE}", groups=(FOUR_BYTE, "é"))
        await storage.rosters.put(user, item)
        assert await storage.rosters.get_item(user, item.jid) == item
        body = f"<message><body>{FOUR_BYTE}</body></message>".encode()
        await storage.offline.push(user, body, quota=10)
        assert [m.stanza for m in await storage.offline.list(user)] == [body]
        await storage.archive.append(
            user,
            with_jid=item.jid,
            stanza=body,
            stanza_id="a1",
            timestamp=datetime.now(UTC),
        )
        page = await storage.archive.query(user, ArchiveQuery(with_jid=item.jid))
        assert [m.stanza for m in page.messages] == [body]
        assert await storage.accounts.list_usernames() == [user]
    assert mariadb_backend.mariadb is not None
    # What another client sees in the table: the characters themselves, not replacement marks.
    (name,) = mariadb_backend.mariadb.rows("SELECT name FROM roster_items")[0]
    assert name == f"Romeo {FOUR_BYTE}"


async def test_jids_compare_exactly_case_accents_and_trailing_spaces(mariadb_backend: SqlBackend) -> None:
    """A case- or accent-folding collation (MariaDB's default utf8mb4_general_ci) would merge these."""
    names = ["juliet", "Juliet", "JULIET", "juliét", "julieť", "juliet ", "juli\u0065\u0301t", "ǰuliet"]
    async with open_sql_storage(mariadb_backend.dsn) as storage:
        for name in names:
            await storage.accounts.create(name, {})
        with pytest.raises(AlreadyExists):
            await storage.accounts.create("juliet", {})
        assert sorted(await storage.accounts.list_usernames()) == sorted(names)
        contacts = ["romeo@x.org", "Romeo@x.org", "roméo@x.org", "romeo@x.org "]
        for contact in contacts:
            await storage.rosters.put("juliet", RosterItem(contact, name=contact))
        for contact in contacts:
            assert (await storage.rosters.get_item("juliet", contact)) == RosterItem(contact, name=contact)
        assert len((await storage.rosters.get("juliet")).items) == 4
        await storage.blocklist.add("juliet", ["Spam@x.org", "spam@x.org"])
        assert await storage.blocklist.list("juliet") == ["Spam@x.org", "spam@x.org"]


async def test_strict_mode_and_utf8mb4_on_every_connection(mariadb_backend: SqlBackend) -> None:
    engine = create_engine(mariadb_backend.dsn)
    try:
        async with engine.connect() as conn:
            mode, charset, zone = (
                await conn.execute(text("SELECT @@SESSION.sql_mode, @@character_set_client, @@time_zone"))
            ).one()
            assert "STRICT_ALL_TABLES" in mode
            assert "STRICT_TRANS_TABLES" in mode
            assert charset == "utf8mb4"
            assert zone == "+00:00"
            # Strict: a value that does not fit is refused, not truncated.
            with pytest.raises(Exception, match="Data too long"):
                await conn.execute(
                    text("INSERT INTO scram_credentials VALUES (1, :n, '', 1, '', '')"), {"n": "x" * 17}
                )
    finally:
        await engine.dispose()
    assert mariadb_backend.mariadb is not None
    tables = mariadb_backend.mariadb.rows(
        "SELECT table_name, engine, table_collation FROM information_schema.tables"
        " WHERE table_schema = DATABASE() AND table_name != 'alembic_version'"
    )
    assert {row[0] for row in tables} == {table.name for table in metadata.sorted_tables}
    assert {(row[1], row[2]) for row in tables} == {("InnoDB", "utf8mb4_bin")}


async def test_migrations_build_exactly_the_schema(mariadb_backend: SqlBackend) -> None:
    async with open_sql_storage(mariadb_backend.dsn):
        pass

    def differences(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))

    engine = create_engine(mariadb_backend.dsn)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await engine.dispose()


async def test_nodes_starting_together_migrate_a_new_database_once() -> None:
    """GET_LOCK: the first node creates the database and migrates; the others wait, then find it done."""
    fresh = create_test_database(prefix="nitro_test_race")
    fresh.drop()
    try:
        opened = [open_sql_storage(fresh.dsn) for _ in range(4)]
        async with contextlib.AsyncExitStack() as stack:
            stores = await asyncio.gather(*(stack.enter_async_context(o) for o in opened))
            await stores[0].accounts.create("alice", {})
            assert await stores[3].accounts.list_usernames() == ["alice"]
        fresh.connection.select_db(fresh.database)
        assert fresh.rows("SELECT COUNT(*) FROM alembic_version") == [(1,)]
    finally:
        fresh.drop()
        fresh.connection.close()


async def test_a_node_waits_for_the_migration_lock_longer_than_query_timeout(
    mariadb_backend: SqlBackend,
) -> None:
    """Another node migrating (holding the lock) for longer than a request may wait is waited for."""
    mariadb = mariadb_backend.mariadb
    assert mariadb is not None
    assert mariadb.rows("SELECT GET_LOCK(%s, 0)", (MIGRATION_LOCK,)) == [(1,)]

    async def open_and_use() -> list[str]:
        async with open_sql_storage(mariadb_backend.dsn, pool=StorageSection(query_timeout=0.5)) as storage:
            await storage.accounts.create("alice", {})
            return await storage.accounts.list_usernames()

    opening = asyncio.create_task(open_and_use())
    try:
        await asyncio.sleep(2.0)
        assert not opening.done()  # still waiting for the lock, not failed by the 0.5 s read timeout
    finally:
        mariadb.rows("SELECT RELEASE_LOCK(%s)", (MIGRATION_LOCK,))
    assert await asyncio.wait_for(opening, 30) == ["alice"]


async def test_concurrent_writers_on_one_account(mariadb_backend: SqlBackend) -> None:
    async with open_sql_storage(mariadb_backend.dsn) as storage:
        await storage.accounts.create("juliet", {})
        results = await asyncio.gather(
            *(storage.accounts.create("romeo", {}) for _ in range(8)), return_exceptions=True
        )
        assert sum(result is None for result in results) == 1
        assert all(isinstance(r, AlreadyExists) for r in results if r is not None)
        versions = await asyncio.gather(
            *(storage.rosters.put("juliet", RosterItem(f"guest{i}@x.org", name=f"🎭{i}")) for i in range(30)),
            *(storage.offline.push("juliet", f"<m>{i}</m>".encode(), quota=10) for i in range(30)),
            return_exceptions=True,
        )
        roster_versions = versions[:30]
        assert sorted(roster_versions) == list(range(1, 31))  # type: ignore[type-var]  # ints, unless one failed
        assert sum(isinstance(r, int) for r in versions[30:]) == 10  # the quota held under contention
        assert await storage.offline.count("juliet") == 10


async def test_writers_of_different_accounts_never_deadlock(mariadb_backend: SqlBackend) -> None:
    """Under REPEATABLE READ, a DELETE of a missing row takes a gap lock and inserts of other accounts
    into that gap deadlock (error 1213): writers run READ COMMITTED so that never happens."""
    users = [f"user{n}" for n in range(30)]
    async with open_sql_storage(mariadb_backend.dsn) as storage:
        for user in users:
            await storage.accounts.create(user, {})

        async def writes(user: str, n: int) -> None:
            await storage.rosters.put(user, RosterItem(f"contact{n}@x.org"))
            await storage.offline.push(user, b"<message/>", quota=100)
            await storage.blocklist.add(user, [f"spam{n}@x.org"])
            await storage.private.set(user, f"{{ns{n}}}q", b"<q/>")

        for n in range(4):  # rounds of one writer per account at once, all accounts together
            await asyncio.gather(*(writes(user, n) for user in users))
        assert [len((await storage.rosters.get(user)).items) for user in users] == [4] * len(users)


async def test_connections_killed_by_the_server_are_replaced(mariadb_backend: SqlBackend) -> None:
    mariadb = mariadb_backend.mariadb
    assert mariadb is not None
    async with open_sql_storage(mariadb_backend.dsn) as storage:
        await storage.accounts.create("juliet", {})
        await asyncio.gather(*(storage.rosters.get("juliet") for _ in range(5)))  # several pooled
        ours = mariadb.rows(
            "SELECT id FROM information_schema.processlist WHERE db = %s AND id != CONNECTION_ID()",
            (mariadb.database,),
        )
        assert ours
        for (connection_id,) in ours:
            mariadb.rows(f"KILL CONNECTION {int(connection_id)}")
        # pool_pre_ping notices each dead connection and opens a new one: no request fails.
        for n in range(10):
            assert await storage.rosters.put("juliet", RosterItem(f"c{n}@x.org")) == n + 1


async def test_an_unreachable_server_is_storage_unavailable() -> None:
    dsn = "mysql+asyncmy://root@127.0.0.1:1/nitro_nowhere"
    with pytest.raises(StorageUnavailable, match="Can't connect"):
        async with open_sql_storage(dsn):
            pass
    with pytest.raises(StorageUnavailable):
        await ensure_database(make_url(dsn), StorageSection())


async def test_a_dsn_with_another_charset_is_refused(mariadb: MariaDB) -> None:
    with pytest.raises(ValueError, match="utf8mb4"):
        create_engine(f"{mariadb.dsn}?charset=latin1")


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ({"dsn": "postgresql://x/y"}, "[storage].dsn must start with one of"),
        ({"dsn": "mysql+asyncmy://root@127.0.0.1:3306"}, "[storage].dsn must name a database"),
        ({"dsn": "mysql+asyncmy://root@127.0.0.1:3306/"}, "[storage].dsn must name a database"),
        ({"pool_size": 0}, "[storage].pool_size must be at least 1"),
        ({"max_overflow": -1}, "[storage].max_overflow must not be negative"),
        ({"pool_recycle": 0}, "[storage].pool_recycle must be positive, or -1"),
        ({"pool_timeout": 0}, "[storage].pool_timeout must be positive"),
        ({"connect_timeout": -1}, "[storage].connect_timeout must be positive"),
        ({"query_timeout": 0}, "[storage].query_timeout must be positive"),
        ({"pool_pre_ping": "yes"}, "[storage].pool_pre_ping: expected bool"),
    ],
)
def test_storage_keys_are_checked(storage: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"storage": storage})
    assert message in str(raised.value)


def test_mariadb_storage_config_is_accepted() -> None:
    config = parse_config(
        {
            "storage": {
                "dsn": "mysql+asyncmy://nitro:pw@127.0.0.1:3306/nitro",
                "pool_recycle": -1,
                "pool_size": 3,
            }
        }
    )
    assert config.storage.pool_size == 3
