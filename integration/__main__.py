"""`python -m integration`: a local cluster for operators and tests.

    python -m integration up --nodes 3 --redis 3      # nodes, a Redis ring, NATS, a fresh MariaDB database
    python -m integration populate --users 1000 --roster 10
    python -m integration run chat                    # or: presence
    python -m integration down

The cluster's processes and ports are kept in DIR/cluster.json (DIR: --dir, var/integration by default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from integration.cluster import LocalCluster, drop_database, stop_pid
from integration.populate import PASSWORD, populate
from integration.scenarios import SCENARIOS


def _state_file(directory: Path) -> Path:
    return directory / "cluster.json"


def _load(directory: Path) -> dict[str, Any]:
    path = _state_file(directory)
    if not path.exists():
        sys.exit(f"no cluster is up in {directory} (python -m integration up)")
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def _save(directory: Path, state: dict[str, Any]) -> None:
    _state_file(directory).write_text(json.dumps(state, indent=2))


def up(args: argparse.Namespace) -> None:
    directory: Path = args.dir.resolve()
    if _state_file(directory).exists():
        sys.exit(f"a cluster is already up in {directory}: python -m integration down first")
    cluster = LocalCluster(
        directory, args.nodes, args.redis, database=args.database, heartbeat_ttl=args.heartbeat_ttl
    )
    cluster.start()
    _save(directory, cluster.state())
    nats = cluster.nats.url if cluster.nats else "-"
    print(f"cluster up in {directory} (database {cluster.dsn}, NATS {nats})")
    for node in cluster.nodes:
        print(
            f"  {node.name}: c2s 127.0.0.1:{node.c2s_port}, metrics {node.metrics_port}, config {node.config}"
        )


def do_populate(args: argparse.Namespace) -> None:
    directory: Path = args.dir.resolve()
    state = _load(directory)
    seconds = asyncio.run(populate(state["dsn"], args.users, args.roster))
    state.update(users=args.users, roster=args.roster)
    contacts = 2 * args.roster
    _save(directory, state)
    print(f"{args.users} users (password {PASSWORD!r}), rosters of {contacts} contacts, in {seconds:.1f} s")


def run(args: argparse.Namespace) -> None:
    state = _load(args.dir.resolve())
    print(asyncio.run(SCENARIOS[args.scenario](state)))


def down(args: argparse.Namespace) -> None:
    directory: Path = args.dir.resolve()
    state = _load(directory)
    for node in state["nodes"]:
        stop_pid(node["pid"])
    stop_pid(state["nats"]["pid"])
    for server in state["redis"]:
        stop_pid(server["pid"])
    drop_database(state["dsn"])
    _state_file(directory).unlink()
    print(f"cluster in {directory} is down")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m integration", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("var/integration"), help="where the cluster lives")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start nodes, a Redis ring, NATS and a fresh database")
    start.add_argument("--nodes", type=int, default=3)
    start.add_argument("--redis", type=int, default=3)
    start.add_argument("--database", choices=("mariadb", "sqlite"), default="mariadb")
    start.add_argument("--heartbeat-ttl", type=float, default=6.0)
    start.set_defaults(func=up)
    fill = commands.add_parser("populate", help="create users and rosters through the SQL layer")
    fill.add_argument("--users", type=int, default=1000)
    fill.add_argument(
        "--roster", type=int, default=10, help="contacts on each side (a roster holds twice this)"
    )
    fill.set_defaults(func=do_populate)
    scenario = commands.add_parser("run", help="run a bot scenario")
    scenario.add_argument("scenario", choices=sorted(SCENARIOS))
    scenario.set_defaults(func=run)
    commands.add_parser("down", help="stop everything and drop the database").set_defaults(func=down)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
