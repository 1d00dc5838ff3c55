"""Bot scenarios against a running cluster's public interfaces (c2s ports only): `python -m integration run`.

Each returns a line of figures, or raises AssertionError naming what went wrong.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from integration.bots import Bot, close, login
from integration.populate import PASSWORD, contacts, username


async def _until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def chat(state: dict[str, Any], users: int = 20, messages: int = 20) -> str:
    """Pairs of populated users on different nodes send each other messages; all arrive, in order."""
    nodes = state["nodes"]
    cert = Path(state["directory"]) / "tls" / "cert.pem"
    bots: list[Bot] = []
    try:
        for index in range(users):
            port = nodes[index % len(nodes)]["c2s_port"]
            bots.append(await login(f"{username(index)}@localhost/bot", PASSWORD, port, cert))
        await asyncio.sleep(0.5)  # every node has heard of every bind
        start = time.perf_counter()
        for index, bot in enumerate(bots):
            peer = (index + 1) % users
            for n in range(messages):
                bot.say(f"{username(peer)}@localhost/bot", f"{index}:{n}")
        await _until(lambda: all(len(bot.messages) >= messages for bot in bots))
        elapsed = time.perf_counter() - start
        for index, bot in enumerate(bots):
            sender = (index - 1) % users
            assert bot.messages == [f"{sender}:{n}" for n in range(messages)], (
                f"{username(index)} got {bot.messages}"
            )
        total = users * messages
        return f"chat: {total} messages between {users} users on {len(nodes)} nodes in {elapsed:.2f} s"
    finally:
        await close(*bots)


async def presence(state: dict[str, Any], users: int = 12) -> str:
    """Populated users (with rosters) log in round-robin over the nodes; each sees its contacts online."""
    nodes = state["nodes"]
    cert = Path(state["directory"]) / "tls" / "cert.pem"
    total = int(state.get("users", users))
    roster = int(state.get("roster", 2))
    bots: list[Bot] = []
    try:
        for index in range(users):
            port = nodes[index % len(nodes)]["c2s_port"]
            bots.append(await login(f"{username(index)}@localhost/bot", PASSWORD, port, cert))

        def seen_all() -> bool:
            for index, bot in enumerate(bots):
                online = {f"{username(j)}@localhost/bot" for j in contacts(index, total, roster) if j < users}
                if not online <= {who for who, kind in bot.presences if kind == "available"}:
                    return False
            return True

        await _until(seen_all)
        return f"presence: {users} users on {len(nodes)} nodes see their online contacts"
    finally:
        await close(*bots)


SCENARIOS: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, str]]] = {
    "chat": chat,
    "presence": presence,
}
