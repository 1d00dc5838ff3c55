"""`nitro db copy`: a SQLite install filled through the repositories arrives in MariaDB table for table;
a non-empty target is refused; a target that ends up different is reported. `nitro db upgrade` too."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlbackends import MariaDB, SqlBackend, create_test_database

from nitro.storage import ArchivePrefs, ArchiveQuery, LastActivity, PepItem, PepNode, RosterItem, Storage
from nitro.storage.copy import TABLES, CopyError, copy_database
from nitro.storage.sql import create_engine, open_sql_storage
from nitro.xmpp.sasl.credentials import ScramCredential

T0 = datetime(2026, 12, 1, 8, 0, 0, 123456, tzinfo=UTC)


def scram(seed: int) -> dict[Any, ScramCredential]:
    return {
        "SHA-256": ScramCredential(
            hash_name="SHA-256",
            salt=bytes([seed]) * 16,
            iterations=4096,
            stored_key=bytes([seed]) * 32,
            server_key=bytes([seed + 1]) * 32,
        )
    }


async def populate(storage: Storage, users: int = 5) -> None:
    """A bit of everything, for several users, through the repositories as the server writes it."""
    for n in range(users):
        user = f"user{n}-é🎸"
        await storage.accounts.create(user, scram(n + 1))
        for c in range(3):
            await storage.rosters.put(
                user, RosterItem(f"contact{c}@example.org", name=f"Friend {c} 💬", groups=("Ünï", "😀"))
            )
        for m in range(4):
            await storage.offline.push(user, f"<message><body>{m} ♥</body></message>".encode(), quota=100)
            await storage.archive.append(
                user,
                with_jid=f"contact{m % 3}@example.org",
                stanza=f"<message><body>archived {m} 🚀</body></message>".encode(),
                stanza_id=f"{user}-{m}",
                timestamp=T0 + timedelta(seconds=m, microseconds=m),
            )
        await storage.archive.set_prefs(user, ArchivePrefs("roster", ("a@example.org",), ("b@example.org",)))
        await storage.pep.put_node(user, PepNode("urn:xmpp:avatar:metadata", access_model="open"))
        for i in range(2):
            await storage.pep.publish(
                user,
                "http://jabber.org/protocol/mood",
                PepItem(f"item{i}", b"<mood xmlns='http://jabber.org/protocol/mood'><happy/></mood>", T0),
                max_items=10,
            )
        await storage.blocklist.add(user, ["spammer@example.org", "troll@example.net/res"])
        await storage.vcards.set(user, f"<vCard xmlns='vcard-temp'><FN>User {n} ✨</FN></vCard>".encode())
        await storage.private.set(user, "{storage:bookmarks}storage", b"<storage xmlns='storage:bookmarks'/>")
        await storage.last.set(user, LastActivity(T0 + timedelta(microseconds=n), f"away {n} 🌙"))
        await storage.rosters.put(
            user,
            RosterItem("zz-asking@example.org", pending_in=True, in_roster=False, request=b"<presence/>"),
        )


async def table_rows(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = create_engine(dsn, create_dirs=False)
    try:
        async with engine.connect() as conn:
            tables = {}
            for table in TABLES:
                query = table.select().order_by(*table.primary_key.columns)
                tables[table.name] = [tuple(row) for row in await conn.execute(query)]
            return tables
    finally:
        await engine.dispose()


@pytest.fixture
async def sqlite_install(tmp_path: Path) -> str:
    dsn = f"sqlite+aiosqlite:///{tmp_path}/nitro.db"
    async with open_sql_storage(dsn) as storage:
        await populate(storage)
    return dsn


async def test_copy_to_mariadb_keeps_every_row_of_every_table(
    tmp_path: Path, sqlite_install: str, mariadb_backend: SqlBackend
) -> None:
    counts = await copy_database(sqlite_install, mariadb_backend.dsn, batch=7)  # several batches per table
    assert {c.table: c.target for c in counts}["archive_messages"] == 20
    assert all(c.source == c.target for c in counts)
    source, target = await table_rows(sqlite_install), await table_rows(mariadb_backend.dsn)
    assert set(source) == {table.name for table in TABLES}
    for name, rows in source.items():
        assert rows, f"populate() left {name} empty: the test would prove nothing for it"
        assert target[name] == rows, name

    # And back again (MariaDB read with a server-side cursor), into a new SQLite file: still equal.
    back = f"sqlite+aiosqlite:///{tmp_path}/back/nitro.db"
    await copy_database(mariadb_backend.dsn, back, batch=1000)
    assert await table_rows(back) == source

    # The server can use the copy: logins, rosters, offline, archive, and new ids do not collide.
    async with open_sql_storage(mariadb_backend.dsn) as storage:
        user = "user3-é🎸"
        assert await storage.accounts.get_credentials(user) == scram(4)
        roster = await storage.rosters.get(user)
        assert roster.version == 4  # three contacts and a pending request
        assert roster.items[0].name == "Friend 0 💬"
        assert len(await storage.offline.list(user)) == 4
        new_id = await storage.offline.push(user, b"<message/>", quota=100)
        assert new_id > max(row[0] for row in source["offline_messages"])
        page = await storage.archive.query(user, ArchiveQuery(limit=10))
        assert [m.id for m in page.messages] == [f"{user}-{m}" for m in range(4)]
        assert page.messages[3].timestamp == T0 + timedelta(seconds=3, microseconds=3)


async def test_a_non_empty_target_is_refused_unless_forced(
    sqlite_install: str, mariadb_backend: SqlBackend
) -> None:
    async with open_sql_storage(mariadb_backend.dsn) as storage:
        await storage.accounts.create("already-here", {})
    with pytest.raises(CopyError, match=r"not empty: accounts \(1 rows\).*--force"):
        await copy_database(sqlite_install, mariadb_backend.dsn)
    async with open_sql_storage(mariadb_backend.dsn) as storage:
        assert await storage.accounts.list_usernames() == ["already-here"]  # untouched

    await copy_database(sqlite_install, mariadb_backend.dsn, force=True)
    assert await table_rows(mariadb_backend.dsn) == await table_rows(sqlite_install)


async def test_a_target_that_ends_up_different_is_reported(
    sqlite_install: str, mariadb_backend: SqlBackend
) -> None:
    """Something else writing to the target (here a trigger) makes the counts differ: the copy fails."""
    mariadb = mariadb_backend.mariadb
    assert mariadb is not None
    async with open_sql_storage(mariadb_backend.dsn):
        pass  # migrated, empty
    mariadb.rows(
        "CREATE TRIGGER extra_block AFTER INSERT ON accounts FOR EACH ROW "
        "INSERT INTO blocked_jids (account_id, jid_key, jid) VALUES (NEW.id, UNHEX(SHA2('x', 256)), 'x')"
    )
    try:
        with pytest.raises(CopyError, match="blocked_jids: 10 in the source, 15 in the target"):
            await copy_database(sqlite_install, mariadb_backend.dsn)
    finally:
        mariadb.rows("DROP TRIGGER extra_block")


async def test_a_source_at_another_schema_revision_is_refused(tmp_path: Path, sqlite_install: str) -> None:
    blank = f"sqlite+aiosqlite:///{tmp_path}/blank.db"
    engine = create_engine(blank)
    async with engine.connect() as conn:  # a database file, but no Nitro schema in it
        await conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        await conn.commit()
    await engine.dispose()
    with pytest.raises(CopyError, match=r"schema revision none.*nitro db upgrade"):
        await copy_database(blank, sqlite_install)


def nitro(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    options = ["--config", str(config)] if config else []
    return subprocess.run(
        [sys.executable, "-m", "nitro", *options, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_copy_and_upgrade(tmp_path: Path, sqlite_install: str, mariadb: MariaDB) -> None:
    fresh = create_test_database(prefix="nitro_test_cli")
    fresh.drop()  # `nitro db upgrade` must create it
    try:
        config = tmp_path / "nitro.toml"
        config.write_text(f'[storage]\ndsn = "{fresh.dsn}"\n')
        upgraded = nitro("db", "upgrade", config=config)
        assert upgraded.returncode == 0, upgraded.stderr
        assert f"created database {fresh.database}" in upgraded.stdout
        shown = make_url(fresh.dsn).render_as_string(hide_password=True)
        assert upgraded.stderr.startswith(f"nitro: database {shown} (MariaDB/MySQL)\n")
        charset = fresh.rows(
            "SELECT default_character_set_name, default_collation_name FROM information_schema.schemata"
            " WHERE schema_name = %s",
            (fresh.database,),
        )
        assert charset == [("utf8mb4", "utf8mb4_bin")]
        again = nitro("db", "upgrade", config=config)  # idempotent
        assert again.returncode == 0
        assert "created" not in again.stdout

        copied = nitro("db", "copy", "--from", sqlite_install, "--to", fresh.dsn, "--batch", "3")
        assert copied.returncode == 0, copied.stderr
        assert "accounts: 5 rows" in copied.stdout
        assert "every table's row count matches" in copied.stdout
        source_file = Path(make_url(sqlite_install).database or "").resolve()
        assert copied.stderr.startswith(
            f"nitro: from database {source_file} (SQLite)\nnitro: to database {shown} (MariaDB/MySQL)\n"
        )

        refused = nitro("db", "copy", "--from", sqlite_install, "--to", fresh.dsn)
        assert refused.returncode == 1
        assert "not empty" in refused.stderr
        assert "--force" in refused.stderr
        assert nitro("db", "copy", "--from", sqlite_install, "--to", fresh.dsn, "--force").returncode == 0

        bad_batch = nitro("db", "copy", "--from", sqlite_install, "--to", fresh.dsn, "--batch", "0")
        assert bad_batch.returncode == 2
        assert "--batch must be at least 1" in bad_batch.stderr
        unreachable = nitro(
            "db", "copy", "--from", sqlite_install, "--to", "mysql+asyncmy://root@127.0.0.1:1/x"
        )
        assert unreachable.returncode == 1
        assert "Can't connect" in unreachable.stderr
    finally:
        fresh.drop()
        fresh.connection.close()
