"""The operator's commands, run as a real process: `nitro user …` and `nitro serve`."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import slixmpp
from conftest import free_port, resolve


def write_config(tmp_path: Path) -> tuple[Path, int]:
    port = free_port()
    config = tmp_path / "nitro.toml"
    config.write_text(
        f"""
[storage]
dsn = "sqlite+aiosqlite:///{tmp_path}/nitro.db"
[c2s]
port = {port}
direct_tls_port = {free_port()}
[tls]
cert = "{tmp_path}/cert.pem"
key = "{tmp_path}/key.pem"
[metrics]
port = 0
[http]
enabled = false
"""
    )
    return config, port


def nitro(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nitro", "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_user_lifecycle(tmp_path: Path) -> None:
    config, _port = write_config(tmp_path)
    assert nitro(config, "user", "add", "Alice", "--password-stdin", stdin="s3cret!\n").returncode == 0
    again = nitro(config, "user", "add", "alice", "--password-stdin", stdin="other\n")
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert nitro(config, "user", "add", "bob", "--password-stdin", stdin="pw-bob\n").returncode == 0
    assert nitro(config, "user", "list").stdout.split() == ["alice", "bob"]
    assert nitro(config, "user", "passwd", "alice", "--password-stdin", stdin="new-pass\n").returncode == 0
    assert nitro(config, "user", "passwd", "carol", "--password-stdin", stdin="x\n").returncode == 1
    assert nitro(config, "user", "del", "bob").returncode == 0
    assert nitro(config, "user", "del", "bob").returncode == 1
    assert nitro(config, "user", "list").stdout.split() == ["alice"]


def test_bad_input_is_refused(tmp_path: Path) -> None:
    config, _port = write_config(tmp_path)
    bad_name = nitro(config, "user", "add", "no spaces", "--password-stdin", stdin="pw\n")
    assert bad_name.returncode == 2
    assert "invalid username" in bad_name.stderr
    empty = nitro(config, "user", "add", "alice", "--password-stdin", stdin="\n")
    assert empty.returncode == 2
    assert "empty password" in empty.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[c2s]\nprot = 1\n")
    bad_config = nitro(broken, "user", "list")
    assert bad_config.returncode == 2
    assert "unknown key 'prot'" in bad_config.stderr


def test_the_database_never_holds_the_password(tmp_path: Path) -> None:
    config, _port = write_config(tmp_path)
    nitro(config, "user", "add", "alice", "--password-stdin", stdin="find-me-if-you-can\n")
    assert b"find-me-if-you-can" not in (tmp_path / "nitro.db").read_bytes()


def test_relative_paths_are_found_from_any_working_directory(tmp_path: Path) -> None:
    etc, one, two = tmp_path / "etc", tmp_path / "one", tmp_path / "two"
    for directory in (etc, one, two):
        directory.mkdir()
    (etc / "nitro.toml").write_text('[storage]\ndsn = "sqlite+aiosqlite:///../var/nitro.db"\n')
    database = tmp_path / "var" / "nitro.db"

    def run_in(cwd: Path, config: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "nitro", "--config", config, *args]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
        return subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=60, check=False, cwd=cwd, env=env
        )

    added = run_in(one, "../etc/nitro.toml", "user", "add", "alice", "--password-stdin", stdin="s3cret!\n")
    assert added.returncode == 0, added.stderr
    assert added.stderr == f"nitro: database {database} (SQLite, a new empty file: it did not exist)\n"
    assert database.exists()
    assert not (one / "var").exists()
    listed = run_in(two, str(etc / "nitro.toml"), "user", "list")
    assert listed.stdout == "alice\n"  # stdout stays parseable: the database line is on stderr
    assert listed.stderr == f"nitro: database {database} (SQLite)\n"
    upgraded = run_in(two, "../etc/nitro.toml", "db", "upgrade")
    assert upgraded.stderr == f"nitro: database {database} (SQLite)\n"


def test_user_add_without_a_terminal_is_a_one_line_error(tmp_path: Path) -> None:
    config, _port = write_config(tmp_path)
    for action in ("add", "passwd"):
        result = subprocess.run(
            [sys.executable, "-m", "nitro", "--config", str(config), "user", action, "alice"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            start_new_session=True,  # no controlling terminal, as under cron or a pipeline
        )
        assert result.returncode == 2
        assert result.stderr == "nitro: no terminal to prompt for the password: use --password-stdin\n"
    assert not (tmp_path / "nitro.db").exists()


async def serve(config: Path, stderr: int = asyncio.subprocess.STDOUT) -> asyncio.subprocess.Process:
    """`nitro serve` as a child process with its output piped; the test stops it with SIGTERM."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nitro",
        "--config",
        str(config),
        "serve",
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def test_serve_accepts_a_client_and_stops_on_sigterm(tmp_path: Path) -> None:
    config, port = write_config(tmp_path)
    nitro(config, "user", "add", "alice", "--password-stdin", stdin="s3cret!\n")
    process = await serve(config)
    try:
        assert process.stdout is not None
        while b"serving localhost" not in await asyncio.wait_for(process.stdout.readline(), 30):
            pass
        client = slixmpp.ClientXMPP("alice@localhost", "s3cret!")
        client.ca_certs = tmp_path / "cert.pem"
        client.enable_direct_tls = False
        started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        client.add_event_handler("session_start", lambda _e: resolve(started, True))
        client.connect("127.0.0.1", port)
        await asyncio.wait_for(started, 15)
        client.disconnect(wait=0.2)
        await asyncio.wait_for(client.disconnected, 5)
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0


async def test_serve_raises_the_soft_descriptor_limit_to_the_hard_one(tmp_path: Path) -> None:
    config, _port = write_config(tmp_path)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = min(256, hard)
    process = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        f'ulimit -Sn {soft} && exec "$0" -m nitro --config "$1" serve',
        sys.executable,
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        output: list[str] = []
        while "serving localhost" not in (output or [""])[-1]:
            output.append((await asyncio.wait_for(process.stdout.readline(), 30)).decode())
            assert output[-1], "".join(output)
        limits = resource.prlimit(process.pid, resource.RLIMIT_NOFILE)  # the running server's own limit
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
    if soft < hard:
        assert any(f"file descriptors: soft limit raised from {soft} to {hard}" in line for line in output)
    assert limits == (hard, hard)
