"""The load of tests/test_fair_load.py, run as a process of its own (so the test's event loop stays free):
one account logs in N times at once, each with a resource of its own, a roster fetch and presence.

Prints one JSON line when every attempt has ended ({"bound": …, "refused": {reason: count}}), then holds
the bound streams until its standard input closes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys

from integration.loadgen.client import LoginPlan
from integration.loadgen.connection import Connection, LoginFailed, connect


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--domain", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--logins", type=int, default=1000)
    args = parser.parse_args(argv)
    refused: collections.Counter[str] = collections.Counter()

    async def attempt(index: int) -> Connection | None:
        plan = LoginPlan(args.domain, args.user, args.password, resource=f"r{index}")
        try:
            return await connect("127.0.0.1", args.port, plan, ssl_context=None, timeout=120)
        except LoginFailed as failure:
            refused[failure.reason[:80]] += 1
            return None

    results = await asyncio.gather(*(attempt(index) for index in range(args.logins)))
    bound = [connection for connection in results if connection is not None]
    print(json.dumps({"bound": len(bound), "refused": dict(refused)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for connection in bound:
        connection.abort()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
