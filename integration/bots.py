"""slixmpp bots for cluster scenarios: log in to a node's c2s port, collect what arrives."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import slixmpp

logging.getLogger("slixmpp").setLevel(logging.ERROR)


class Bot(slixmpp.ClientXMPP):
    """A logged-in client that records messages and presence it receives."""

    def __init__(self, jid: str, password: str) -> None:
        super().__init__(jid, password)
        self.messages: list[str] = []
        self.presences: list[tuple[str, str]] = []  # (from, "available" | "unavailable")
        self.add_event_handler("message", lambda m: self.messages.append(str(m["body"])))
        self.add_event_handler(
            "presence_available", lambda p: self.presences.append((str(p["from"]), "available"))
        )
        self.add_event_handler(
            "presence_unavailable", lambda p: self.presences.append((str(p["from"]), "unavailable"))
        )

    def say(self, to: str, body: str) -> None:
        self.send_message(mto=slixmpp.JID(to), mbody=body, mtype="chat")


B = TypeVar("B", bound=Bot)


async def login(jid: str, password: str, port: int, cert: Path, *, plugins: tuple[str, ...] = ()) -> Bot:
    """Connect (STARTTLS, trusting `cert`), authenticate, bind, send initial presence."""
    return await login_as(Bot, jid, password, port, cert, plugins=plugins)


async def login_as(
    kind: Callable[[str, str], B],
    jid: str,
    password: str,
    port: int,
    cert: Path,
    *,
    plugins: tuple[str, ...] = (),
) -> B:
    """Connect (STARTTLS, trusting `cert`), authenticate, bind, send initial presence."""
    bot = kind(jid, password)
    for plugin in plugins:
        bot.register_plugin(plugin)
    bot.ca_certs = cert
    bot.enable_plaintext = False
    started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def on_start(_event: Any) -> None:
        bot.send_presence()
        if not started.done():
            started.set_result(True)

    def on_failure(_event: Any) -> None:
        if not started.done():
            started.set_exception(AssertionError(f"{jid}: authentication failed"))

    bot.add_event_handler("session_start", on_start)
    bot.add_event_handler("failed_all_auth", on_failure)
    bot.connect("127.0.0.1", port)
    await asyncio.wait_for(started, 20)
    return bot


async def close(*bots: Bot) -> None:
    for bot in bots:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bot.disconnect(wait=0.5), 3)
        bot.abort()
