"""The operator's commands on a running server (`status`, `sessions`, `kick`, `reload`, and `user …` while
it runs) and the XEP-0227 `export` / `import`; `nitro.cli` hands these sub-commands over to this module.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nitro.accounts import InvalidUsername, prepare_username
from nitro.config import Config
from nitro.ops.channel import ChannelError, NotRunning, call, pid_path, socket_path
from nitro.ops.credentials import credentials_to_wire
from nitro.xmpp.sasl.credentials import derive_all

COMMANDS = frozenset({"status", "sessions", "kick", "reload", "export", "import", "upgrade"})


def add_ops_parsers(commands: Any) -> None:
    """The sub-commands of this module, on the subparsers object of the `nitro` parser."""
    for name, text in (
        ("status", "uptime, connections by state, nodes of the running server (admin socket)"),
        ("sessions", "who is connected from where: full JID, address, transport, since when"),
    ):
        parser = commands.add_parser(name, help=text)
        parser.add_argument("--json", action="store_true", help="print the server's answer as JSON")
    kick = commands.add_parser(
        "kick",
        help="close the sessions of a JID (bare: every resource) on this node with <policy-violation/>",
    )
    kick.add_argument("jid", help="alice@example.com (every resource) or alice@example.com/phone")
    kick.add_argument("--reason", default=None, help="the text sent with the stream error")
    commands.add_parser(
        "reload",
        help="re-read the config file in the running server (same as SIGHUP): TLS certificates, log "
        "level, registration, limits, modules; what needs a restart is named",
    )
    commands.add_parser(
        "upgrade",
        help="replace the running server by the code now installed without dropping a connection (as "
        "SIGUSR2; with [server] workers > 1 every worker, one at a time): exit 0 once done, 3 if an "
        "upgrade is already under way, 4 if a successor failed and its process goes on (rolled back), "
        "5 if refused because [server] workers is more than 1 and [admin] socket is off",
    )
    export = commands.add_parser(
        "export", help="write every account with its data to an XEP-0227 file (works while serving)"
    )
    export.add_argument("file", type=Path, help="the XML file to write ('-' for standard output)")
    export.add_argument(
        "--per-user",
        action="store_true",
        help="FILE is a directory: one USER@DOMAIN.xml document per account (Prosody's xep0227 storage)",
    )
    imported = commands.add_parser(
        "import", help="read accounts and their data from an XEP-0227 file (Nitro's, Prosody's, ejabberd's)"
    )
    imported.add_argument("files", type=Path, nargs="+", metavar="FILE", help="XML files (e.g. one per user)")
    imported.add_argument(
        "--replace", action="store_true", help="delete and re-create accounts that already exist here"
    )


async def ops_command(config: Config, args: argparse.Namespace) -> int:
    if args.command == "export":
        from nitro.ops.xep0227_export import export_command  # imported late: SQLAlchemy is heavy

        return await export_command(config, args.file, per_user=args.per_user)
    if args.command == "import":
        from nitro.ops.xep0227_import import import_command

        return await import_command(config, args.files, replace=args.replace)
    if args.command == "upgrade":
        from nitro.ops.upgrade_cli import upgrade_command

        return await upgrade_command(config)
    try:
        if args.command == "reload":
            return await _reload(config)
        if args.command == "kick":
            return _kicked(await call(config, "kick", jid=args.jid, reason=args.reason), args.jid)
        result = await call(config, args.command)
        if args.command == "status" and "workers" in result:  # each worker's own generation and upgrade
            await _worker_statuses(config, result["workers"])
    except ChannelError as exc:
        print(f"nitro: {exc}", file=sys.stderr)
        return 1
    if args.json:
        import json

        print(json.dumps(result, indent=2, ensure_ascii=False))
    elif args.command == "status":
        _print_status(result)
    else:
        _print_sessions(result["sessions"])
    return 0


def _kicked(result: dict[str, Any], jid: str) -> int:
    kicked = result.get("kicked") or []
    if not kicked:
        print(f"nitro: no session of {jid} on this node", file=sys.stderr)
        return 1
    for full in kicked:
        print(f"kicked {full}")
    return 0


async def _worker_statuses(config: Config, rows: list[dict[str, Any]]) -> None:
    """[server] workers > 1: what each worker's own admin socket says (None for one that does not answer)."""
    from nitro.cluster.workers import worker_config

    for row in rows:
        if row["worker"] == 0:
            continue
        try:
            row["status"] = await call(worker_config(config, row["worker"]), "status")
        except ChannelError:
            row["status"] = None


def _print_workers(status: dict[str, Any]) -> None:
    rolling = status.get("rolling") or {}
    if rolling.get("state", "idle") != "idle":
        where = "" if rolling.get("worker") is None else f" (at worker {rolling['worker']})"
        replaced = ", ".join(str(row["worker"]) for row in rolling.get("replaced", [])) or "none"
        reason = f": {rolling['reason']}" if rolling.get("reason") else ""
        print(f"upgrade of the workers: {rolling['state']}{where}, replaced: {replaced}{reason}")
    for row in status["workers"]:
        own = status if row["worker"] == 0 else row.get("status")
        if own is None:
            print(f"worker {row['worker']}: pid {row['pid']}, not answering (restarts: {row['restarts']})")
            continue
        print(
            f"worker {row['worker']}: pid {own['pid']}, generation {own.get('generation', '?')}, "
            f"{own['bound']} bound, restarts {row['restarts']}"
        )
        upgrade = own.get("upgrade") or {}
        if row["worker"] != 0 and upgrade.get("state", "idle") != "idle":
            print(
                f"  upgrade: {upgrade['state']}, {upgrade.get('moved', 0)} of {upgrade.get('to_move', 0)} "
                f"sessions moved, {upgrade.get('closed', 0)} closed"
            )
        predecessor = own.get("predecessor")
        if row["worker"] != 0 and predecessor and not (predecessor["done"] or predecessor["gone"]):
            adopted, expected = predecessor["adopted"], predecessor.get("expected", 0)
            print(f"  taking over: {adopted} of {expected} sessions adopted")


def _print_status(status: dict[str, Any]) -> None:
    uptime = int(status["uptime"])
    hours, rest = divmod(uptime, 3600)
    print(f"nitro {status['version']} serving {status['domain']}, pid {status['pid']}, node {status['node']}")
    print(f"up {hours}h {rest // 60:02d}m {rest % 60:02d}s since {status['started']}")
    print(f"configuration reloads: {status['reloads']}")
    counts = ", ".join(f"{state} {count}" for state, count in status["connections"].items())
    print(f"connections: {counts}")
    print(f"bound resources: {status['bound']}")
    nodes = [f"{node} (this one)" if node == status["node"] else node for node in status["nodes"]]
    print(f"nodes: {', '.join(nodes) or 'none known'}")
    for member in status.get("cluster", []):  # [cluster]: live nodes with their bound resources
        where = f"pid {member['pid']} on {member['host']}"
        print(f"  cluster node {member['node']}: {member['sessions']} sessions ({where})")
    if "generation" in status:
        print(f"generation: {status['generation']}")
    upgrade = status.get("upgrade") or {}
    if upgrade.get("state", "idle") != "idle":
        print(
            f"upgrade: {upgrade['state']}, successor {upgrade.get('successor')}, "
            f"{upgrade.get('moved', 0)} of {upgrade.get('to_move', 0)} sessions moved, "
            f"{upgrade.get('closed', 0)} closed"
            + (f" ({upgrade['reason']})" if upgrade.get("reason") else "")
        )
    if "workers" in status:
        _print_workers(status)
    predecessor = status.get("predecessor")
    if predecessor:
        state = "done" if predecessor["done"] else "gone" if predecessor["gone"] else "draining"
        print(
            f"taking over from the previous generation: {state}, {predecessor['adopted']} of "
            f"{predecessor.get('expected', 0)} sessions adopted, {predecessor.get('left', 0)} closed there"
        )


def _print_sessions(rows: list[dict[str, Any]]) -> None:
    header = ("JID", "ADDRESS", "TRANSPORT", "TLS", "STATE", "SINCE")
    table = [header] + [
        (
            row["jid"],
            row["peer"],
            row["transport"],
            "yes" if row["tls"] else "no",
            row["state"],
            row["since"] or "-",
        )
        for row in rows
    ]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    print(f"{len(rows)} session{'' if len(rows) == 1 else 's'}")


async def _reload(config: Config) -> int:
    try:
        result = await call(config, "reload")
    except NotRunning as exc:
        return _reload_by_signal(config, exc)
    except ChannelError as exc:
        print(f"nitro: reload refused, the running configuration stays: {exc}", file=sys.stderr)
        return 1
    print(f"reloaded: {', '.join(result['applied']) or 'nothing changed'}")
    if result.get("certificate"):
        print(f"TLS certificate read again from {result['certificate']}")
    if result["restart_needed"]:
        print(f"needs a restart to change: {', '.join(result['restart_needed'])}")
    for failure in result.get("failed", []):
        print(f"nitro: {failure}", file=sys.stderr)
    return 1 if result.get("failed") else 0


def _reload_by_signal(config: Config, why: NotRunning) -> int:
    """Without a socket: SIGHUP to the pid in the pid file, if that process is a Nitro."""
    path = pid_path(config)
    try:
        pid = int(path.read_text().strip()) if path is not None else 0
    except (OSError, ValueError):
        pid = 0
    if pid <= 0 or not _is_nitro(pid):
        where = f"; no running Nitro in {path}" if path is not None else ""
        print(f"nitro: {why}{where}", file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGHUP)
    print(f"sent SIGHUP to {pid} (no admin socket at {socket_path(config)}): see its log for the outcome")
    return 0


def _is_nitro(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False  # gone (or no /proc: we do not signal what we cannot identify)
    except OSError:
        return False
    return b"nitro" in cmdline


# -- `nitro user …` while the server runs ----------------------------------------------------------------


async def server_running(config: Config) -> bool:
    """Whether a server answers on the admin socket (then account changes go through it)."""
    path = socket_path(config)
    if path is None or not path.exists():
        return False
    try:
        await call(config, "status")
    except NotRunning:
        return False
    except ChannelError:
        return True  # something answers there: let the real request report what is wrong
    return True


async def user_through_server(
    config: Config, args: argparse.Namespace, read_password: Callable[[bool], str]
) -> int:
    """`user add|passwd|del` done by the running server: it closes a deleted user's sessions (and those
    of a user whose password changed) at once, and its caches see the change. The CLI derives the SCRAM
    keys itself, so no password crosses the socket."""
    try:
        username = prepare_username(args.username, config.server.domain)
    except InvalidUsername as exc:
        print(f"nitro: invalid username {args.username!r}: {exc}", file=sys.stderr)
        return 2
    try:
        if args.action == "del":
            result = await call(config, "user-del", username=username)
            print(f"deleted {result['jid']} through the running server ({result['closed']} sessions closed)")
            return 0
        password = read_password(args.password_stdin)
        if not password:
            print("nitro: empty password", file=sys.stderr)
            return 2
        credentials = await asyncio.to_thread(derive_all, password, iterations=config.auth.scram_iterations)
        wire = credentials_to_wire(credentials)
        if args.action == "add":
            result = await call(config, "user-add", username=username, credentials=wire)
            print(f"created {result['jid']} through the running server")
            return 0
        result = await call(config, "user-passwd", username=username, credentials=wire)
        closed = result["closed"]
        print(f"password changed for {result['jid']} through the running server ({closed} sessions closed)")
        return 0
    except ChannelError as exc:
        print(f"nitro: {exc}", file=sys.stderr)
        return 1
