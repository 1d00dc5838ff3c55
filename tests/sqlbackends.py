"""Fixtures that run storage tests on every SQL backend: SQLite in tmp_path, and MariaDB in a fresh
`nitro_test_<random>` database on the machine's server (NITRO_TEST_MARIADB overrides its URL), emptied
before each test and dropped at the end of the session.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from sqlalchemy.engine import URL, make_url

from nitro.storage.schema import metadata

MARIADB_URL = os.environ.get("NITRO_TEST_MARIADB", "mysql+asyncmy://root@127.0.0.1:3306")


def connect(url: URL, database: str | None = None) -> pymysql.Connection[Any]:
    """A plain (sync, autocommit) client connection to the server of `url`, for set-up and checks."""
    return pymysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        database=database,
        charset="utf8mb4",
        autocommit=True,
        connect_timeout=5,
        read_timeout=60,
    )


@dataclasses.dataclass
class MariaDB:
    """One test database on a MariaDB server, and a sync connection to it for set-up and checks."""

    url: URL  # the server, without a database
    database: str
    connection: pymysql.Connection[Any]

    @property
    def dsn(self) -> str:
        return self.url.set(database=self.database).render_as_string(hide_password=False)

    def rows(self, sql: str, parameters: Any = None) -> list[tuple[Any, ...]]:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, parameters)
            return list(cursor.fetchall())

    def clean(self) -> None:
        """Delete every row of every Nitro table (children first), keeping the migrated schema."""
        present = {row[0] for row in self.rows("SHOW TABLES")}
        for table in reversed(metadata.sorted_tables):
            if table.name in present:
                self.rows(f"DELETE FROM `{table.name}`")  # noqa: S608 - names from our own schema

    def drop(self) -> None:
        self.rows(f"DROP DATABASE IF EXISTS `{self.database}`")


def create_test_database(url_text: str = MARIADB_URL, prefix: str = "nitro_test") -> MariaDB:
    """A new, empty utf8mb4 database with a random name; the caller drops it."""
    url = make_url(url_text).set(database="")
    try:
        connection = connect(url)
    except pymysql.err.OperationalError as exc:
        pytest.fail(f"MariaDB at {url_text} is needed for these tests (set NITRO_TEST_MARIADB): {exc}")
    database = f"{prefix}_{secrets.token_hex(6)}"
    server = MariaDB(url=url, database=database, connection=connection)
    server.rows(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    connection.select_db(database)
    return server


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    """The session's MariaDB test database (migrated by the first test that opens storage on it)."""
    server = create_test_database()
    try:
        yield server
    finally:
        server.drop()
        server.connection.close()


@dataclasses.dataclass(frozen=True)
class SqlBackend:
    name: str  # "sqlite" or "mariadb"
    dsn: str
    mariadb: MariaDB | None = None


@pytest.fixture
def mariadb_backend(mariadb: MariaDB) -> SqlBackend:
    """The MariaDB test database, emptied for this test."""
    mariadb.clean()
    return SqlBackend("mariadb", mariadb.dsn, mariadb)


@pytest.fixture(params=["sqlite", "mariadb"])
def sql_backend(request: pytest.FixtureRequest, tmp_path: Path) -> SqlBackend:
    """Each SQL backend in turn: a test that takes this fixture runs once on SQLite, once on MariaDB."""
    if request.param == "sqlite":
        # "data" does not exist yet: open_sql_storage creates it.
        return SqlBackend("sqlite", f"sqlite+aiosqlite:///{tmp_path}/data/nitro.db")
    backend: SqlBackend = request.getfixturevalue("mariadb_backend")
    return backend
