"""Process tuning: GC thresholds and freezing for the life of a server, and the event-loop switch."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from pathlib import Path

import pytest
import uvloop
from conftest import make_config
from test_cli import write_config

from nitro.config import ConfigError, parse_config
from nitro.server import Server, running_server
from nitro.transports.tcp import ClientConnection
from nitro.transports.tcp_task import TIMER


async def test_gc_is_tuned_while_the_server_runs_and_restored_after(tmp_path: Path) -> None:
    before = gc.get_threshold()
    gc_table = {"threshold0": 12345, "threshold1": 7, "threshold2": 3, "young_interval": 0}
    config = make_config(tmp_path, gc=gc_table)
    async with running_server(config):
        assert gc.get_threshold() == (12345, 7, 3)
        assert gc.get_freeze_count() > 10_000  # modules, lxml, SQLAlchemy: everything alive at start-up
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_freezing_can_be_turned_off(tmp_path: Path) -> None:
    config = make_config(tmp_path, gc={"freeze_after_start": False, "young_interval": 0})
    async with running_server(config):
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == (10000, 2, 100)  # the defaults of config/nitro.toml


@pytest.mark.parametrize("key", ["threshold0", "threshold1", "threshold2"])
def test_a_threshold_below_one_is_refused(key: str) -> None:
    with pytest.raises(ConfigError, match=r"\[gc\] thresholds must be at least 1"):
        parse_config({"gc": {key: 0}})


def test_an_unknown_gc_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown key 'treshold0'"):
        parse_config({"gc": {"treshold0": 10}})


async def serving_line(config: Path, *args: str) -> bytes:
    """Start `nitro serve`, return its "serving" log line, stop it with SIGTERM."""
    return (await startup_lines(config, *args))[-1]


async def startup_lines(config: Path, *args: str) -> list[bytes]:
    """Start `nitro serve`, return its log lines up to the "serving" one, stop it with SIGTERM."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nitro",
        "--config",
        str(config),
        "serve",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        lines: list[bytes] = []
        for _ in range(200):  # bounded: start-up logs a few dozen lines
            lines.append(await asyncio.wait_for(process.stdout.readline(), 30))
            if b"serving localhost" in lines[-1] or not lines[-1]:
                return lines
        raise AssertionError("no 'serving' line")
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 15) == 0


async def test_serve_runs_on_uvloop_by_default_and_on_asyncio_when_told(tmp_path: Path) -> None:
    config, _port = write_config(tmp_path)
    assert (await serving_line(config)).rstrip().endswith(b"on uvloop")
    assert (await serving_line(config, "--no-uvloop")).rstrip().endswith(b"on asyncio")
    with config.open("a") as file:
        file.write("[runtime]\nuvloop = false\n")
    assert (await serving_line(config)).rstrip().endswith(b"on asyncio")


def test_connection_timers_survive_uvloops_past_deadlines(tmp_path: Path) -> None:
    """uvloop turns a call_at in the past into a plain Handle (no when()); a connection whose session is
    already past its deadline, and reads again before that handle ran, still gets its data, then TIMER."""
    server = Server(make_config(tmp_path), None, None)  # type: ignore[arg-type]  # no storage needed here

    async def scenario() -> list[object]:
        connection = ClientConnection(server, server.transport_limits)
        past = time.monotonic() - 1.0
        seen = [await connection.read(past)]  # the timer fires at once
        connection.data_received(b"<presence/>")
        seen.append(await connection.read(past))  # data first; the past-deadline handle is pending
        connection.data_received(b"<presence/>")
        seen.append(await connection.read(past))  # read again before that handle ran
        seen.append(await connection.read(past))
        return seen

    assert uvloop.run(scenario()) == [TIMER, b"<presence/>", b"<presence/>", TIMER]
