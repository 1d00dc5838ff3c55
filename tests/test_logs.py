"""Structured logs: every line logged while serving a client names that client's session."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import slixmpp
from conftest import PASSWORD, Clients, resolve, wait_for
from test_cli import nitro, serve, write_config

from nitro.config import ConfigError, parse_config
from nitro.observe.logs import LIBRARY_LOGGERS, configure, make_handler
from nitro.server import Server


@contextmanager
def captured(format: str) -> Iterator[io.StringIO]:
    """Nitro's DEBUG records in `format`, through the handler `nitro serve` uses."""
    stream = io.StringIO()
    handler = make_handler(format, stream)
    logger = logging.getLogger("nitro")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def alice_writes_to_offline_bob(clients: Clients) -> None:
    """Alice logs in and sends Bob, who is offline, a message: the offline module logs on her behalf."""
    alice = await clients.login(await clients.user("alice"))
    bob = await clients.user("bob")
    alice.send_message(mto=slixmpp.JID(bob), mbody="while you were out", mtype="chat")
    await wait_for(lambda: clients.server.metrics.offline_stored == 1)


async def test_text_lines_keep_the_session_prefix_and_module_lines_gain_it(
    server: Server, clients: Clients
) -> None:
    with captured("text") as stream:
        await alice_writes_to_offline_bob(clients)
        logging.getLogger("nitro.test").info("outside any session")
    lines = stream.getvalue().splitlines()
    authenticated = next(line for line in lines if "authenticated as alice@localhost" in line)
    match = re.search(r"nitro\.c2s\.\w+: \[(c2s\d+-[0-9a-f]+) alice@localhost\] authenticated", authenticated)
    assert match, authenticated
    session = match.group(1)
    stored = next(line for line in lines if "nitro.modules.offline:" in line and "stored message" in line)
    assert re.search(rf"nitro\.modules\.offline: \[{session} alice@localhost/[^]]+\] stored message", stored)
    assert any(line.endswith("nitro.test: outside any session") for line in lines)


async def test_json_lines_carry_session_and_jid(server: Server, clients: Clients) -> None:
    with captured("json") as stream:
        await alice_writes_to_offline_bob(clients)
        logging.getLogger("nitro.test").info("outside any session")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    authenticated = next(r for r in records if r["message"] == "authenticated as alice@localhost")
    assert authenticated["logger"].startswith("nitro.c2s.")
    assert authenticated["jid"] == "alice@localhost"
    stored = next(r for r in records if r["logger"] == "nitro.modules.offline")
    assert stored["session"] == authenticated["session"]
    assert stored["jid"].startswith("alice@localhost/")
    assert not stored["message"].startswith("[")
    outside = next(r for r in records if r["logger"] == "nitro.test")
    assert "session" not in outside
    assert "jid" not in outside


async def test_json_logs_of_two_sessions_on_stdout(tmp_path: Path) -> None:
    """`nitro serve` with `[logging] format = "json"`: every stdout line is JSON; each session its own id."""
    config, port = write_config(tmp_path)
    with config.open("a") as file:
        file.write('[logging]\nformat = "json"\nlevel = "DEBUG"\n')
    for name in ("alice", "bob"):
        assert nitro(config, "user", "add", name, "--password-stdin", stdin=f"{PASSWORD}\n").returncode == 0
    process = await serve(config, stderr=asyncio.subprocess.PIPE)
    lines: list[str] = []
    try:
        assert process.stdout is not None
        while "serving localhost" not in (
            line := (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        ):
            lines.append(line)
        lines.append(line)
        clients = [await login(tmp_path, port, f"{name}@localhost") for name in ("alice", "bob")]
        clients[0].send_message(mto=slixmpp.JID("bob@localhost"), mbody="hi", mtype="chat")
        await clients[1].wait_until("message", 5)
        for client in clients:
            client.disconnect(wait=0.2)
            await asyncio.wait_for(client.disconnected, 5)
    finally:
        process.send_signal(signal.SIGTERM)
        output, errors = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0
    assert errors == b""
    lines += output.decode().splitlines()
    records: list[dict[str, Any]] = [json.loads(line) for line in lines if line.strip()]
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    by_user: dict[str, set[str]] = {"alice": set(), "bob": set()}
    for record in records:
        for user, sessions in by_user.items():
            if record.get("jid", "").startswith(f"{user}@localhost"):
                sessions.add(record["session"])
    assert len(by_user["alice"]) == 1
    assert len(by_user["bob"]) == 1
    assert by_user["alice"] != by_user["bob"]
    assert PASSWORD not in "\n".join(lines)


async def login(tmp_path: Path, port: int, jid: str) -> slixmpp.ClientXMPP:
    client = slixmpp.ClientXMPP(jid, PASSWORD)
    client.ca_certs = tmp_path / "cert.pem"
    client.enable_direct_tls = False
    started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    client.add_event_handler("session_start", lambda _e: resolve(started, True))
    client.add_event_handler("session_start", lambda _e: client.send_presence())
    client.connect("127.0.0.1", port)
    await asyncio.wait_for(started, 15)
    return client


@pytest.mark.parametrize("value", ["xml", "JSON", ""])
def test_an_unknown_log_format_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"\[logging\].format must be text or json"):
        parse_config({"logging": {"format": value}})


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """`configure` replaces the root handlers and sets library levels: put everything back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    libraries = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        for name, library_level in libraries.items():
            logging.getLogger(name).setLevel(library_level)


@pytest.mark.usefixtures("restored_logging")
@pytest.mark.parametrize(("level", "library_lines"), [("INFO", False), ("WARNING", False), ("DEBUG", True)])
def test_library_loggers_stay_at_warning_unless_debug(level: str, library_lines: bool) -> None:
    stream = io.StringIO()
    configure(level, "text", stream)
    for name in ("alembic.runtime.migration", "aiosqlite", "sqlalchemy.pool", "aiohttp.access", "redis"):
        logging.getLogger(name).info("%s chatter", name)
        logging.getLogger(name).warning("%s trouble", name)
    logging.getLogger("nitro.test").warning("nitro speaks")
    text = stream.getvalue()
    assert ("alembic.runtime.migration chatter" in text) is library_lines
    assert ("aiohttp.access chatter" in text) is library_lines
    assert "redis trouble" in text
    assert "nitro speaks" in text


async def test_serve_at_info_prints_no_library_lines(tmp_path: Path) -> None:
    config, _port = write_config(tmp_path)
    process = await serve(config)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        while not lines or "serving localhost" not in lines[-1]:
            lines.append((await asyncio.wait_for(process.stdout.readline(), 30)).decode())
            assert lines[-1], "".join(lines)
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(process.communicate(), 15)
    lines += rest.decode().splitlines()
    assert [line for line in lines if " INFO " in line and " nitro" not in line] == []
    assert any("SQL storage ready" in line for line in lines)
