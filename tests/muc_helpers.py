"""Helpers for the chatroom tests: a server with the muc plugin at conference.localhost (run by the test
in external mode), slixmpp clients with the XEP-0045 plugin, and waiting for their stanzas."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import slixmpp
from conftest import Clients, wait_for
from plugin_helpers import SECRET, plugins_config
from slixmpp.exceptions import PresenceError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from nitro.config import Config
from nitro.sdk import settings_from_config
from nitro.server import Server
from plugins import muc

MUC = "conference.localhost"
CLIENT_PLUGINS = (
    "xep_0045",
    "xep_0004",
    "xep_0249",
    "xep_0313",
    "xep_0059",
    "xep_0359",
    "xep_0421",
    "xep_0092",
    "xep_0054",
)


def muc_config(tmp_path: Path, mode: str = "external", **options: Any) -> Config:
    entry = {"mode": mode, "subdomain": MUC, "secret": SECRET, **options}
    return plugins_config(tmp_path, {"muc": entry})


@contextlib.asynccontextmanager
async def running_muc(server: Server) -> AsyncIterator[asyncio.Task[None]]:
    """The muc plugin as its own task (what `inprocess` does), until the block ends."""
    assert server.bridge is not None
    settings = dataclasses.replace(settings_from_config(server.config, "muc"), core_port=server.bridge.port)
    task = asyncio.create_task(muc.main(settings))
    host = server.bridge.plugins["muc"]
    try:
        await wait_for(lambda: host.available or task.done(), 10)
        if task.done():
            task.result()
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Inbox:
    """Every stanza a client receives, kept so a test can wait for the one it expects."""

    def __init__(self, client: slixmpp.ClientXMPP) -> None:
        self.stanzas: list[Any] = []
        self.changed = asyncio.Event()
        for kind in ("message", "presence"):  # every one, whatever slixmpp's own handlers make of it
            client.register_handler(
                Callback(f"inbox-{kind}", MatchXPath(f"{{jabber:client}}{kind}"), self._add)
            )

    def _add(self, stanza: Any) -> None:
        self.stanzas.append(stanza)
        self.changed.set()

    async def wait(self, predicate: Callable[[Any], bool], timeout: float = 5.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                for stanza in self.stanzas:
                    if predicate(stanza):
                        self.stanzas.remove(stanza)
                        return stanza
                self.changed.clear()
                await self.changed.wait()

    def clear(self) -> None:
        self.stanzas.clear()


async def user(clients: Clients, name: str) -> tuple[slixmpp.ClientXMPP, Inbox]:
    client = await clients.login(await clients.user(name), plugins=CLIENT_PLUGINS)
    return client, Inbox(client)


def codes(stanza: Any) -> set[int]:
    return {int(c) for c in stanza["muc"]["status_codes"]} if stanza["muc"] else set()


def room_jid(name: str) -> slixmpp.JID:
    return slixmpp.JID(f"{name}@{MUC}")


async def configure(client: slixmpp.ClientXMPP, name: str, fields: dict[str, Any]) -> None:
    """Submit a muc#roomconfig form with `fields` (XEP-0045 §10.2) and wait for the result."""
    form = client.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/muc#roomconfig")
    for var, value in fields.items():
        form.add_field(var=f"muc#roomconfig_{var}", value=value)
    await client.plugin["xep_0045"].set_room_config(room_jid(name), form)


async def create_room(
    client: slixmpp.ClientXMPP, name: str, nick: str, fields: dict[str, Any] | None = None
) -> Any:
    """Create `name` as its owner and configure it (an empty form: an instant room, §10.1.2)."""
    presence, _subject, _occupants, _history = await client.plugin["xep_0045"].join_muc_wait(
        room_jid(name), nick, maxstanzas=0, timeout=10
    )
    assert {110, 201} <= codes(presence)
    if fields:
        await configure(client, name, fields)
    else:
        form = client.plugin["xep_0004"].make_form(ftype="submit")
        await client.plugin["xep_0045"].set_room_config(room_jid(name), form)
    return presence


async def join_error(client: slixmpp.ClientXMPP, name: str, nick: str, **kw: Any) -> str:
    """The error condition of a join that must fail."""
    try:
        await client.plugin["xep_0045"].join_muc_wait(room_jid(name), nick, timeout=10, **kw)
    except PresenceError as error:
        return str(error.condition)
    raise AssertionError(f"joining {name} as {nick} succeeded")
