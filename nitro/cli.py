"""The `nitro` command: `serve` the server; `user add|del|passwd|list`, `db upgrade|copy` and `check` for
operators; `status|sessions|kick|reload|export|import` (in `nitro.ops.cli`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from nitro import __version__
from nitro.accounts import InvalidUsername, change_password, create_account, prepare_username
from nitro.cli_db import add_db_parser, db_command
from nitro.config import Config, ConfigError, load_config
from nitro.observe.heap import fix_mmap_threshold
from nitro.observe.logs import configure as configure_logging
from nitro.observe.runtime import loop_name, run
from nitro.ops.check import add_check_parser, check_command
from nitro.ops.cli import COMMANDS as OPS_COMMANDS
from nitro.ops.cli import add_ops_parsers, ops_command, server_running, user_through_server
from nitro.ops.console import announce_database, terminal_available
from nitro.ops.limits import raise_fd_limit
from nitro.storage.errors import AlreadyExists, StorageError
from nitro.storage.layered import open_storage

log = logging.getLogger("nitro")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nitro", description="Nitro, an XMPP server.")
    parser.add_argument("--version", action="version", version=f"nitro {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=(
            "TOML configuration file; relative paths inside it are relative to its directory "
            "(default: the built-in defaults, as in config/nitro.toml, relative to the working directory)"
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_parser = commands.add_parser(
        "serve",
        help="run the server until SIGINT/SIGTERM (SIGHUP reloads the config, SIGUSR2 upgrades in place)",
    )
    serve_parser.add_argument(
        "--no-uvloop",
        action="store_true",
        help="run on asyncio's own event loop even if uvloop is installed ([runtime] uvloop = false)",
    )
    serve_parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # [server] workers

    user = commands.add_parser("user", help="manage accounts in the configured storage")
    actions = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("add", "create an account"), ("passwd", "set an account's password")):
        action = actions.add_parser(name, help=text)
        action.add_argument("username", help="the localpart (alice, not alice@example.com)")
        action.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from the first line of standard input instead of prompting",
        )
    delete = actions.add_parser("del", help="delete an account and everything stored for it")
    delete.add_argument("username")
    actions.add_parser("list", help="list accounts, one per line")
    add_db_parser(commands)
    add_check_parser(commands)
    add_ops_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":  # reports a broken config as a finding instead of failing on it
        return run(check_command(args.config))
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"nitro: {exc}", file=sys.stderr)
        if args.command == "serve":
            from nitro.ops.successor import refuse_early  # an upgrade's successor says why to the old process

            refuse_early(f"configuration: {exc}")
        return 2
    level = config.logging.level.upper()
    if args.command != "serve" and level != "DEBUG":
        level = "WARNING"  # `nitro user list` prints names, not log lines
    configure_logging(level, config.logging.format)
    if args.command == "serve":
        fix_mmap_threshold(config.runtime.malloc_mmap_threshold)
        return run(serve(config, args.worker), use_uvloop=config.runtime.uvloop and not args.no_uvloop)
    if args.command == "db":
        return run(db_command(config, args))
    if args.command in OPS_COMMANDS:
        return run(ops_command(config, args))
    return run(user_command(config, args))


async def serve(config: Config, worker: int = 0) -> int:
    from nitro.cluster.link import ClusterError
    from nitro.cluster.workers import worker_config, worker_count
    from nitro.ops.lifecycle import SuccessorFailed, serving  # imported late: keeps `nitro user` light
    from nitro.ops.supervise import WorkerSupervisor
    from nitro.ops.upgrade_progress import HANDOVER_FD

    workers = worker_count(
        config
    )  # [server] workers: worker 0 supervises the others (nitro/ops/supervise.py)
    supervisor = WorkerSupervisor(config, workers) if workers > 1 and worker == 0 else None
    successor = HANDOVER_FD in os.environ  # an upgrade's successor: the other workers run already
    if workers > 1:
        config = worker_config(config, worker)

    raise_fd_limit()  # before any listener: each connection needs a descriptor
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with serving(
            config, stop.set, worker=worker, supervisor=supervisor
        ) as server:  # also as a successor
            loop.add_signal_handler(
                signal.SIGHUP, server.reload
            )  # re-read the config file (nitro.ops.reload)
            log.info("Nitro %s serving %s on %s", __version__, server.domain, loop_name())
            try:
                if supervisor is not None:
                    await supervisor.start(adopt=successor)
                await stop.wait()
            finally:
                if supervisor is not None:  # nothing once an upgrade handed them to the successor
                    await supervisor.stop()
            loop.remove_signal_handler(signal.SIGHUP)
            log.info("shutting down")
    except SuccessorFailed:  # an upgrade's successor that cannot serve: the old process goes on
        return 1
    except (OSError, StorageError, ConfigError, ClusterError) as exc:  # ConfigError: e.g. unusable TLS files
        log.error("cannot serve: %s", exc)  # one clean line for operators
        return 1
    return 0


async def user_command(config: Config, args: argparse.Namespace) -> int:
    if args.action in ("add", "passwd") and not args.password_stdin and not terminal_available():
        print("nitro: no terminal to prompt for the password: use --password-stdin", file=sys.stderr)
        return 2
    if args.action != "list" and await server_running(config):  # the server closes sessions, sees the change
        return await user_through_server(config, args, _read_password)
    announce_database(config.storage.dsn)
    async with open_storage(config) as storage:  # through the tiers: writes invalidate the ring
        if args.action == "list":
            for name in await storage.accounts.list_usernames():
                print(name)
            return 0
        try:
            username = prepare_username(args.username, config.server.domain)
        except InvalidUsername as exc:
            print(f"nitro: invalid username {args.username!r}: {exc}", file=sys.stderr)
            return 2
        if args.action == "del":
            if not await storage.accounts.delete(username):
                print(f"nitro: no account {username!r}", file=sys.stderr)
                return 1
            print(f"deleted {username}@{config.server.domain}")
            return 0
        password = _read_password(args.password_stdin)
        if not password:
            print("nitro: empty password", file=sys.stderr)
            return 2
        iterations = config.auth.scram_iterations
        if args.action == "add":
            try:
                await create_account(storage, username, password, iterations=iterations)
            except AlreadyExists:
                print(f"nitro: account {username!r} already exists", file=sys.stderr)
                return 1
            print(f"created {username}@{config.server.domain}")
            return 0
        if not await change_password(storage, username, password, iterations=iterations):
            print(f"nitro: no account {username!r}", file=sys.stderr)
            return 1
        print(f"password changed for {username}@{config.server.domain}")
        return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    try:
        first = getpass.getpass("Password: ")
        again = getpass.getpass("Again: ")
    except EOFError:  # Ctrl-D at the prompt: no password, and `user_command` says so
        return ""
    if again != first:
        print("nitro: passwords differ", file=sys.stderr)
        return ""
    return first


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
