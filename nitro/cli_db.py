"""`nitro db upgrade` and `nitro db copy`: schema migrations and moving an install to another database."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqlalchemy.engine import make_url

from nitro.config import Config
from nitro.ops.console import announce_database
from nitro.storage.copy import copy_database
from nitro.storage.errors import StorageError
from nitro.storage.sql import create_engine, upgrade_schema
from nitro.storage.sql_mysql import ensure_database, is_mysql


def add_db_parser(commands: Any) -> None:
    """The `db` command and its actions, on the subparsers object of the `nitro` parser."""
    db = commands.add_parser("db", help="migrate the configured database, or copy one database to another")
    actions = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser(
        "upgrade",
        help="apply the schema migrations to [storage].dsn (a missing MariaDB database is created)",
    )
    copy = actions.add_parser(
        "copy",
        help="copy every table from one database to another (e.g. SQLite to MariaDB), then compare counts",
        description=(
            "Copies accounts (with their SCRAM keys), rosters, offline messages, the archive, PEP, block "
            "lists, vCards, private XML and archive preferences, in batches, keeping ids, then compares "
            "the row count of every table. The source is read as one snapshot; stop the server first so "
            "no write arrives after it. Exits 1 with a message when the counts differ."
        ),
    )
    copy.add_argument("--from", dest="source", required=True, metavar="DSN", help="database to copy from")
    copy.add_argument(
        "--to", dest="target", required=True, metavar="DSN", help="database to copy to (migrated first)"
    )
    copy.add_argument(
        "--force", action="store_true", help="empty a target that already holds rows instead of refusing"
    )
    copy.add_argument(
        "--batch", type=int, default=1000, metavar="N", help="rows per insert transaction (default 1000)"
    )


def _safe(dsn: str) -> str:
    return make_url(dsn).render_as_string(hide_password=True)


async def db_command(config: Config, args: argparse.Namespace) -> int:
    try:
        if args.action == "upgrade":
            return await _upgrade(config)
        if args.batch < 1:
            print("nitro: --batch must be at least 1", file=sys.stderr)
            return 2
        announce_database(args.source, "from")
        announce_database(args.target, "to")
        counts = await copy_database(
            args.source,
            args.target,
            force=args.force,
            batch=args.batch,
            progress=lambda line: print(line, file=sys.stderr),
        )
    except (StorageError, ValueError) as exc:
        print(f"nitro: {exc}", file=sys.stderr)
        return 1
    for count in counts:
        print(f"{count.table}: {count.target} rows")
    print(f"copied {_safe(args.source)} to {_safe(args.target)}; every table's row count matches")
    return 0


async def _upgrade(config: Config) -> int:
    announce_database(config.storage.dsn)
    engine = create_engine(config.storage.dsn, pool=config.storage)
    try:
        if is_mysql(engine.url) and await ensure_database(engine.url, config.storage):
            print(f"created database {engine.url.database}")
        await upgrade_schema(engine)
    finally:
        await engine.dispose()
    print(f"{_safe(config.storage.dsn)} is at the newest schema")
    return 0
