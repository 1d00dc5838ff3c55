"""`python -m plugins.compliance --config FILE [--name NAME] search|export|purge …`: the record's CLI
(without a command, the plugin runs)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from nitro.sdk import load_settings
from plugins.compliance import dsn_of
from plugins.compliance.store import open_store, purge, search


def _timestamp(text: str) -> float:
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m plugins.compliance", description="The compliance record.")
    top.add_argument("--config", required=True, help="the Nitro config file with [plugins.NAME]")
    top.add_argument("--name", default="compliance", help="the [plugins.NAME] table (default compliance)")
    top.add_argument("--core", default=None, help="HOST:PORT of the plugin listener (when running)")
    top.add_argument("--log-level", default="INFO")
    commands = top.add_subparsers(dest="command")
    found = commands.add_parser("search", help="records as JSON Lines, oldest first")
    found.add_argument("--user", help="a bare JID, as sender or recipient")
    found.add_argument("--peer", help="a second bare JID, as sender or recipient")
    found.add_argument("--since", type=_timestamp, help="ISO 8601 time (UTC unless it says)")
    found.add_argument("--until", type=_timestamp, help="ISO 8601 time, exclusive")
    found.add_argument("--text", help="a substring of the body")
    found.add_argument("--limit", type=int, default=None)
    export = commands.add_parser("export", help="one UTC day as a compliance feed file (JSON Lines)")
    export.add_argument("--day", required=True, type=datetime.date.fromisoformat, help="YYYY-MM-DD")
    export.add_argument("--out", default="-", help="the file to write (default: standard output)")
    purged = commands.add_parser("purge", help="delete records older than the retention")
    purged.add_argument("--older-than-days", type=float, default=None, help="default: retention_days")
    return top


async def run(args: argparse.Namespace, out: TextIO) -> int:
    settings = load_settings(args.config, args.name)
    engine = await open_store(dsn_of(settings))
    try:
        if args.command == "search":
            criteria = {k: getattr(args, k) for k in ("user", "peer", "since", "until", "text", "limit")}
            async for item in search(engine, **criteria):
                out.write(json.dumps(item, ensure_ascii=False) + "\n")
        elif args.command == "export":
            start = datetime.datetime.combine(args.day, datetime.time(), datetime.UTC).timestamp()
            lines = [
                json.dumps(item, ensure_ascii=False) + "\n"
                async for item in search(engine, since=start, until=start + 86400)
            ]
            _write(args.out, lines, out)
        elif args.command == "purge":
            days = args.older_than_days
            if days is None:
                days = float(settings.option("retention_days", 0))
            if days <= 0:
                print("no retention: give --older-than-days or set retention_days", file=sys.stderr)
                return 2
            removed = await purge(engine, time.time() - days * 86400)
            print(f"{removed} records purged", file=sys.stderr)
    finally:
        await engine.dispose()
    return 0


def _write(path: str, lines: list[str], out: TextIO) -> None:
    if path == "-":
        out.writelines(lines)
        return
    with open(path, "w", encoding="utf-8") as target:
        target.writelines(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command is None:
        from nitro.sdk.cli import run as run_plugin
        from plugins.compliance import main as plugin_main

        rest = ["--config", args.config, "--name", args.name, "--log-level", args.log_level]
        run_plugin(plugin_main, "compliance", rest + (["--core", args.core] if args.core else []))
        return
    raise SystemExit(asyncio.run(run(args, sys.stdout)))
