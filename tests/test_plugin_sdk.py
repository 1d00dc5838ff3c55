"""The plugin SDK and the echo plugin: `main(settings)` connects, serves, and reconnects after the core
drops its link; settings come from the same config the server reads."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

import pytest
from conftest import Clients, next_event, result_of, wait_for
from plugin_helpers import ECHO, SECRET, plugins_config
from slixmpp import JID

from nitro.config import Config
from nitro.sdk import load_settings, settings_from_config
from nitro.server import Server
from nitro.xmpp.errors import StreamError
from plugins import echo


@pytest.fixture
def config(tmp_path: Path) -> Config:
    entry = {"mode": "external", "subdomain": ECHO, "secret": SECRET, "prefix": "> "}
    return plugins_config(tmp_path, {"echo": entry})


async def test_settings_from_the_server_config(config: Config, tmp_path: Path) -> None:
    settings = settings_from_config(config, "echo")
    assert (settings.subdomain, settings.secret, settings.core_port) == (ECHO, SECRET, config.plugins.port)
    assert settings.option("prefix") == "> "
    assert settings.option("missing", 3) == 3
    path = tmp_path / "nitro.toml"
    path.write_text(
        '[plugins]\nport = 6000\nhost = "0.0.0.0"\n'
        '[plugins.e]\nmode = "process"\nsubdomain = "e.localhost"\nsecret = "s"\nlimit = 5\n'
    )
    loaded = load_settings(path, "e")
    assert (loaded.core_host, loaded.core_port, loaded.options) == ("127.0.0.1", 6000, {"limit": 5})
    moved = load_settings(path, "e", core="10.1.2.3:7000")
    assert (moved.core_host, moved.core_port) == ("10.1.2.3", 7000)


async def test_echo_plugin_answers_and_reconnects(server: Server, clients: Clients) -> None:
    assert server.bridge is not None
    settings = dataclasses.replace(settings_from_config(server.config, "echo"), core_port=server.bridge.port)
    before = echo.plugin.connections
    task = asyncio.create_task(echo.main(settings))
    try:
        host = server.bridge.plugins["echo"]
        await wait_for(lambda: host.connected, 10)
        alice = await clients.login(await clients.user("alice"))
        alice.send_message(mto=JID(f"room@{ECHO}"), mbody="hi", mtype="chat")
        assert (await next_event(alice, "message"))["body"] == "> hi"
        version = await result_of(alice.plugin["xep_0030"].get_info(jid=JID(ECHO), timeout=5))
        assert version["type"] == "result"
        # the core drops the link: the plugin comes back by itself (SDK backoff)
        assert host.link is not None
        link = next(iter(server.bridge.links))
        await link.close(StreamError("reset"))
        await wait_for(lambda: echo.plugin.connections >= before + 2 and host.connected, 10)
        alice.send_message(mto=JID(f"room@{ECHO}"), mbody="again", mtype="chat")
        assert (await next_event(alice, "message"))["body"] == "> again"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
