"""The README's backup and restore recipes, run for real: SQLite's online backup of a running server,
and `mysqldump --single-transaction` of MariaDB restored into another database."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import slixmpp
from conftest import Clients, make_config, started_server, wait_for
from sqlalchemy.engine import make_url
from sqlbackends import SqlBackend, create_test_database

from nitro.accounts import create_account
from nitro.storage.sql import open_sql_storage


def integrity(database: Path) -> str:
    with sqlite3.connect(database) as connection:
        (result,) = connection.execute("PRAGMA integrity_check").fetchone()
    connection.close()
    return str(result)


def python_backup(source: Path, target: Path) -> None:
    """The README's recipe with Python's sqlite3 backup API (no sqlite3 program needed)."""
    with sqlite3.connect(source) as live, sqlite3.connect(target) as copy:
        live.backup(copy)
    live.close()
    copy.close()


async def usernames(dsn: str) -> list[str]:
    async with open_sql_storage(dsn, create_dirs=False) as storage:
        return await storage.accounts.list_usernames()


async def test_sqlite_online_backup_of_a_running_server_restores(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    live = tmp_path / "nitro.db"
    backups = {"python": tmp_path / "backup-python.db"}
    async with started_server(config) as server:
        clients = Clients(server)
        try:
            alice = await clients.login(await clients.user("alice"))
            bob = await clients.user("bob")
            alice.send_message(mto=slixmpp.JID(bob), mbody="kept in the backup", mtype="chat")
            await wait_for(lambda: server.metrics.offline_stored == 1)
            # While the server runs (its WAL not checkpointed), from other threads as from other processes.
            await asyncio.to_thread(python_backup, live, backups["python"])
            if shutil.which("sqlite3"):
                backups["cli"] = tmp_path / "backup-cli.db"
                command = ["sqlite3", str(live), f".backup {backups['cli']}"]
                await asyncio.to_thread(subprocess.run, command, check=True, timeout=60)
        finally:
            await clients.close_all()
    for backup in backups.values():
        assert integrity(backup) == "ok"
        assert await usernames(f"sqlite+aiosqlite:///{backup}") == ["alice", "bob"]
    # Restore: with the server stopped, the backup replaces the database (and its WAL files go).
    live.unlink()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"nitro.db{suffix}").unlink(missing_ok=True)
    shutil.copyfile(backups["python"], live)
    async with started_server(config) as server:
        clients = Clients(server)
        try:
            bob_client = await clients.login("bob@localhost")
            message = await bob_client.wait_until("message", 5)
            assert message["body"] == "kept in the backup"
        finally:
            await clients.close_all()


@pytest.mark.skipif(shutil.which("mysqldump") is None, reason="mysqldump is not installed")
async def test_mysqldump_single_transaction_restores_into_another_database(
    mariadb_backend: SqlBackend,
) -> None:
    source = mariadb_backend.mariadb
    assert source is not None
    async with open_sql_storage(source.dsn) as storage:
        await create_account(storage, "alice", "s3cret!!")
    target = create_test_database(prefix="nitro_restore")
    try:
        url = make_url(source.dsn)
        login = ["-h", url.host or "127.0.0.1", "-P", str(url.port or 3306), "-u", url.username or "root"]
        if url.password:
            login.append(f"-p{url.password}")
        dump_command = [
            "mysqldump",
            *login,
            "--single-transaction",
            "--routines",
            "--triggers",
            source.database,
        ]
        dump = await asyncio.to_thread(
            subprocess.run, dump_command, capture_output=True, check=True, timeout=120
        )
        restore = ["mariadb", *login, target.database]
        await asyncio.to_thread(subprocess.run, restore, input=dump.stdout, check=True, timeout=120)
        assert await usernames(target.dsn) == ["alice"]
    finally:
        target.drop()
        target.connection.close()
