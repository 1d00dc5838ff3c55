"""Plugins across `nitro upgrade` (a real `nitro serve` process, the echo plugin in `inprocess` and `process`
modes, a slixmpp client with stream management): the successor's own supervisor serves the plugin's
subdomain, the old process's plugin stops with it, and a client messaging the plugin through the upgrade
gets every reply once."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from conftest import PASSWORD, free_port
from upgrade_node import Node, Reconnecting, alive, node, upgrade_section

from integration.bots import close, login

ECHO = "echo.localhost"


def plugins_section(mode: str) -> str:
    return (
        f'[plugins]\nport = {free_port()}\nping_interval = 5.0\n[plugins.echo]\nmode = "{mode}"\n'
        f'subdomain = "{ECHO}"\nsecret = "echo secret"\n'
    )


@pytest.fixture(params=["inprocess", "process"])
async def served(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Node]:
    extra = upgrade_section(ready_timeout=30.0, drain_rate=50.0, drain_deadline=10.0)
    running = node(tmp_path, extra + plugins_section(request.param))
    await running.add_users("alice")
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_a_client_messaging_a_plugin_through_an_upgrade_gets_every_reply(served: Node) -> None:
    await served.wait_log("plugin echo connected")
    cert = served.config.path(served.config.tls.cert)
    alice = await login(
        "alice@localhost/phone", PASSWORD, served.config.c2s.port, cert, plugins=("xep_0198",)
    )
    watch = Reconnecting(alice, served.config.c2s.port)
    watch.starts = 0
    # What the client really wrote to a connection: a message queued just as the old process closed the
    # connection is never written (slixmpp's send queue raises NotConnectedError and drops it), so it is
    # not the server's to answer. A stanza written and then resent after <resume/> counts once.
    sent: list[str] = []
    write = alice.send_raw

    def written(data: str | bytes) -> None:
        write(data)  # raises NotConnectedError without a connection: then nothing was sent
        text = data.decode() if isinstance(data, bytes) else data
        for body in re.findall(r"<body>(n\d+)</body>", text):
            if f"echo: {body}" not in sent:
                sent.append(f"echo: {body}")

    alice.send_raw = written  # type: ignore[method-assign]
    stop = asyncio.Event()

    async def chat() -> None:
        index = 0
        while not stop.is_set():
            if watch.connected:
                alice.say(f"x@{ECHO}", f"n{index}")
                index += 1
            await asyncio.sleep(0.05)

    chatting = asyncio.create_task(chat())
    try:
        await asyncio.sleep(1.0)
        old = served.first_pid
        code, out, err = await served.nitro("upgrade")
        assert code == 0, out + err
        new = await served.wait_for_pid(lambda pid: pid != old)
        await asyncio.sleep(1.5)
        stop.set()
        await chatting
        await until(lambda: len(alice.messages) >= len(sent))
        await asyncio.sleep(0.5)  # a duplicate would come now
        assert alice.messages == sent  # every reply, once, in order
        assert watch.resumed >= 1
        assert watch.starts == 0
        assert new != old
        log = served.log.read_text(errors="replace")
        assert log.count("plugin echo connected") == 2  # the successor's own echo (after the old's)
        assert "host echo.localhost removed" in log  # the old process's plugin host, as it exited
        children = [int(pid) for pid in re.findall(r"plugin echo: started pid (\d+)", log)]
        if served.config.plugins.entries[0].mode == "process":  # one child per process; the old one's ended
            assert len(children) == 2
            await until(lambda: not alive(children[0]))
            assert alive(children[1])
    finally:
        stop.set()
        await close(alice)


async def test_a_successor_whose_plugin_module_is_missing_is_not_ready(served: Node) -> None:
    """The successor's self-check includes the plugins: a module it cannot import is a rollback naming it,
    and the running server (with its echo) goes on."""
    await served.wait_log("plugin echo connected")
    served.file.write_text(
        served.file.read_text().replace("[plugins.echo]", '[plugins.echo]\nmodule = "no_such_plugin"')
    )
    code, _out, err = await served.nitro("upgrade")
    assert code == 4, err
    assert "no module no_such_plugin" in err
    assert served.pid == served.first_pid
    cert = served.config.path(served.config.tls.cert)
    alice = await login("alice@localhost/phone", PASSWORD, served.config.c2s.port, cert)
    try:
        alice.say(f"x@{ECHO}", "still there")
        await until(lambda: alice.messages == ["echo: still there"])
    finally:
        await close(alice)
