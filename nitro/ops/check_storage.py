"""`nitro check` on storage: the SQL database is reachable and its schema revision is known (alembic
current against head); each Redis instance of the ring answers. Reads only: creates no file or database."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio
import redis.exceptions
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Connection, make_url

from nitro.config import Config
from nitro.ops.findings import Finding, error, ok, warn
from nitro.storage.errors import StorageError
from nitro.storage.sql import alembic_config, create_engine
from nitro.storage.sql_base import translate_errors
from nitro.storage.sql_mysql import is_mysql

_UNKNOWN_DATABASE = 1049  # MariaDB/MySQL ER_BAD_DB_ERROR


async def check_storage(config: Config) -> AsyncIterator[Finding]:
    dsn = config.storage.dsn
    url = make_url(dsn)
    shown = url.render_as_string(hide_password=True)
    if (path := _sqlite_file(url)) is not None:
        if missing := _missing_file_findings(path):
            for finding in missing:
                yield finding
            return
        shown = str(path)
    deadline = config.storage.connect_timeout + config.storage.query_timeout
    engine = create_engine(dsn, create_dirs=False, pool=config.storage)
    try:
        async with asyncio.timeout(deadline):
            with translate_errors():
                async with engine.connect() as connection:
                    current = await connection.run_sync(_current_revisions)
    except (StorageError, TimeoutError) as exc:
        driver_args = getattr(getattr(exc.__cause__, "orig", None), "args", None) or (None,)
        if driver_args[0] == _UNKNOWN_DATABASE:
            yield warn(f"storage: {shown}: the database does not exist: the first start creates it")
        else:
            yield error(f"storage: cannot open {shown}: {exc or f'no answer within {deadline:g} s'}")
        return
    finally:
        await engine.dispose()
    yield ok(f"storage: {shown} is reachable")
    yield _schema_finding(current)


def _current_revisions(connection: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(connection).get_current_heads())


def _schema_finding(current: tuple[str, ...]) -> Finding:
    script = ScriptDirectory.from_config(alembic_config())
    heads = set(script.get_heads())
    known = {revision.revision for revision in script.walk_revisions()}
    if unknown := sorted(set(current) - known):
        return error(
            f"storage: schema revision {', '.join(unknown)} is unknown to this Nitro (written by a newer "
            "version?): upgrade Nitro, or restore a backup"
        )
    if set(current) == heads:
        return ok(f"storage: schema at the newest revision ({', '.join(sorted(heads))})")
    at = ", ".join(sorted(current)) or "no schema yet"
    return warn(
        f"storage: schema at {at}, newest is {', '.join(sorted(heads))}: the next start (or "
        "`nitro db upgrade`) migrates it"
    )


def _sqlite_file(url: URL) -> Path | None:
    database = url.database
    if is_mysql(url) or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).resolve()


def _missing_file_findings(path: Path) -> list[Finding]:
    """Nothing when the SQLite file exists; else what the first start will do about it."""
    if path.exists():
        return []
    findings = [warn(f"storage: {path} does not exist: the first start (or `nitro db upgrade`) creates it")]
    parent = next((directory for directory in path.parents if directory.exists()), Path("/"))
    if not os.access(parent, os.W_OK | os.X_OK):
        findings.append(error(f"storage: cannot create {path}: {parent} is not writable"))
    return findings


async def check_redis(config: Config) -> AsyncIterator[Finding]:
    ring = config.redis
    if not ring.instances:
        yield ok("redis: no ring configured (one node: sessions are known in memory)")
        return
    for instance in ring.instances:
        client = redis.asyncio.Redis.from_url(
            instance.url, socket_timeout=ring.socket_timeout, socket_connect_timeout=ring.socket_timeout
        )
        try:
            async with asyncio.timeout(ring.socket_timeout * 3):
                info = await client.info("server")
            yield ok(f"redis: {instance.url} answers (Redis {info.get('redis_version', '?')})")
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            yield error(f"redis: {instance.url} does not answer: {exc or 'timed out'}")
        finally:
            await client.aclose()
