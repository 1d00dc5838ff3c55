"""The README's "Write a plugin in five minutes": its code, taken from the README, runs as a plugin."""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from conftest import Clients, result_of, started_server, wait_for
from plugin_helpers import plugins_config
from slixmpp import JID, Iq, Message

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_blocks(language: str) -> list[str]:
    section = README.read_text().split("## Write a plugin in five minutes", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.DOTALL)


@pytest.fixture
def hello_module(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "hello.py").write_text(readme_blocks("python")[0])
    sys.path.insert(0, str(tmp_path))
    try:
        yield "hello"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("hello", None)


async def test_the_readme_plugin_works(tmp_path: Path, hello_module: str) -> None:

    table = tomllib.loads(readme_blocks("toml")[0])["plugins"]["hello"]
    assert table["module"] == hello_module
    config = plugins_config(tmp_path, {"hello": table})
    async with started_server(config) as server:
        assert server.bridge is not None
        await wait_for(lambda: server.bridge is not None and server.bridge.plugins["hello"].connected, 10)
        clients = Clients(server)
        try:
            alice = await clients.login(await clients.user("alice"))
            got: list[Message] = []
            alice.add_event_handler("message", got.append)
            alice.send_message(mto=JID("anyone@hello.localhost"), mbody="world", mtype="chat")
            await wait_for(lambda: len(got) == 1)
            assert got[0]["body"] == "hello, world"
            iq: Iq = alice.make_iq_get(ito=JID("hello.localhost"))
            iq.append(ET.Element("{urn:example:uptime}uptime"))
            answer = await result_of(iq.send(timeout=5))
            uptime = answer.xml.find("{urn:example:uptime}uptime")
            assert uptime is not None
            assert int(uptime.text or "-1") >= 0
        finally:
            await clients.close_all()
