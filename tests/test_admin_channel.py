"""The admin channel: `nitro status|sessions|kick` and `nitro user …` acting on a running server, through a
Unix socket of mode 0600; the CLI runs as a real process next to a real server and real clients."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import slixmpp
from conftest import DOMAIN, PASSWORD, Clients, free_port, make_config, resolve, started_server, wait_for
from redis_servers import RedisServer, redis_servers

from nitro.config import Config, load_config
from nitro.ops.channel import ChannelError, NotRunning, call, socket_path
from nitro.server import Server
from nitro.xmpp.jid import JID

__all__ = ["redis_servers"]


def write_config(tmp_path: Path, extra: str = "") -> Path:
    """A config file like an operator's: the admin socket and pid file relative to the file's directory."""
    path = tmp_path / "nitro.toml"
    path.write_text(
        f"""
[server]
domain = "{DOMAIN}"
[storage]
dsn = "sqlite+aiosqlite:///{tmp_path}/nitro.db"
[c2s]
port = {free_port()}
direct_tls_port = {free_port()}
negotiation_timeout = 20.0
[tls]
cert = "{tmp_path}/tls/cert.pem"
key = "{tmp_path}/tls/key.pem"
[metrics]
port = 0
[http]
enabled = false
[admin]
socket = "run/admin.sock"
pid_file = "run/nitro.pid"
{extra}
"""
    )
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def config(config_file: Path) -> Config:  # the `server` and `clients` fixtures use this config
    return load_config(config_file)


async def nitro(config_file: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """The `nitro` command as a child process; asynchronous, so the server in this loop can answer it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nitro",
        "--config",
        str(config_file),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def errors_of(client: slixmpp.ClientXMPP) -> list[str]:
    """The stream error conditions `client` receives from now on."""
    errors: list[str] = []
    client.add_event_handler("stream_error", lambda error: errors.append(error["condition"]))
    return errors


async def test_the_socket_is_private_and_relative_to_the_config_file(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "run" / "admin.sock"
    assert socket_path(server.config) == path
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert (tmp_path / "run" / "nitro.pid").read_text().strip() == str(os.getpid())


async def test_status_and_sessions_show_who_is_connected(
    server: Server, clients: Clients, config_file: Path
) -> None:
    alice = await clients.user("alice")
    await clients.login(f"{alice}/phone")
    await clients.login(f"{alice}/laptop", direct_tls=True)

    status = await call(server.config, "status")
    assert status["pid"] == os.getpid()
    assert status["domain"] == DOMAIN
    assert status["bound"] == 2
    assert status["connections"]["bound"] == 2
    assert status["node"] in status["nodes"]
    rows = (await call(server.config, "sessions"))["sessions"]
    assert [row["jid"] for row in rows] == [f"{alice}/laptop", f"{alice}/phone"]
    assert all(row["peer"] == "127.0.0.1" and row["tls"] and row["since"] for row in rows)
    assert [row["transport"] for row in rows] == ["tls", "tcp"]  # Direct TLS, STARTTLS

    async def states() -> list[str]:
        return [row["state"] for row in (await call(server.config, "sessions"))["sessions"]]

    await wait_for_async(states, ["available", "available"])  # once their initial presence is in

    code, out, err = await nitro(config_file, "status")
    assert code == 0, err
    assert f"serving {DOMAIN}, pid {os.getpid()}" in out
    assert "bound 2" in out
    code, out, err = await nitro(config_file, "sessions")
    assert code == 0, err
    assert f"{alice}/phone" in out
    assert "127.0.0.1" in out
    assert out.rstrip().endswith("2 sessions")


async def test_kick_closes_every_resource_of_a_bare_jid_with_policy_violation(
    server: Server, clients: Clients, config_file: Path
) -> None:
    alice, bob = await clients.user("alice"), await clients.user("bob")
    phone, laptop = await clients.login(f"{alice}/phone"), await clients.login(f"{alice}/laptop")
    witness = await clients.login(bob)
    kicked = [errors_of(phone), errors_of(laptop)]
    untouched = errors_of(witness)

    code, out, err = await nitro(config_file, "kick", alice, "--reason", "spam")

    assert code == 0, err
    assert sorted(out.split()) == sorted(["kicked", f"{alice}/phone", "kicked", f"{alice}/laptop"])
    # ejabberd's kick: <policy-violation/> (RFC 6120 §4.9.3.14) with the reason as text
    await wait_for(lambda: kicked == [["policy-violation"], ["policy-violation"]])
    assert server.sessions.resources(JID.parse(alice)) == []
    assert untouched == []
    assert len(server.sessions.resources(JID.parse(bob))) == 1


async def test_kick_of_a_full_jid_closes_only_that_resource(server: Server, clients: Clients) -> None:
    alice = await clients.user("alice")
    phone, laptop = await clients.login(f"{alice}/phone"), await clients.login(f"{alice}/laptop")
    phone_errors, laptop_errors = errors_of(phone), errors_of(laptop)

    result = await call(server.config, "kick", jid=f"{alice}/phone")

    assert result["kicked"] == [f"{alice}/phone"]
    await wait_for(lambda: phone_errors == ["policy-violation"])
    assert laptop_errors == []
    assert [str(s.jid) for s in server.sessions.resources(JID.parse(alice))] == [f"{alice}/laptop"]


async def test_kick_refuses_bad_jids_and_says_when_nobody_is_there(server: Server, config_file: Path) -> None:
    with pytest.raises(ChannelError) as raised:
        await call(server.config, "kick", jid="not a jid@@")
    assert raised.value.code == "bad-request"
    with pytest.raises(ChannelError, match="is not an account of"):
        await call(server.config, "kick", jid="alice@elsewhere.example")
    code, _out, err = await nitro(config_file, "kick", f"nobody@{DOMAIN}")
    assert code == 1
    assert f"no session of nobody@{DOMAIN} on this node" in err


async def test_user_del_through_the_running_server_ends_the_sessions_at_once(
    server: Server, clients: Clients, config_file: Path
) -> None:
    bob = await clients.user("bob")
    errors = errors_of(await clients.login(bob))

    code, out, err = await nitro(config_file, "user", "del", "bob")

    assert code == 0, err
    assert f"deleted {bob} through the running server (1 sessions closed)" in out
    await wait_for(lambda: errors == ["not-authorized"])
    assert not await server.storage.accounts.exists("bob")
    code, _out, err = await nitro(config_file, "user", "del", "bob")
    assert code == 1
    assert "no account 'bob'" in err


async def test_user_passwd_through_the_running_server_resets_the_sessions(
    server: Server, clients: Clients, config_file: Path
) -> None:
    alice = await clients.user("alice")
    errors = errors_of(await clients.login(alice))

    code, out, err = await nitro(
        config_file, "user", "passwd", "alice", "--password-stdin", stdin="n3w-pass\n"
    )

    assert code == 0, err
    assert "through the running server (1 sessions closed)" in out
    await wait_for(lambda: errors == ["reset"])  # as Prosody: log in again with the new password
    await clients.login(alice, "n3w-pass")
    refused = clients.make(alice, PASSWORD)
    failed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    refused.add_event_handler("failed_all_auth", lambda _e: resolve(failed, True))
    await clients.connect(refused)
    assert await asyncio.wait_for(failed, 15)


async def test_user_add_through_the_running_server(
    server: Server, clients: Clients, config_file: Path
) -> None:
    code, out, err = await nitro(
        config_file, "user", "add", "carol", "--password-stdin", stdin="c4rol-pass\n"
    )

    assert code == 0, err
    assert f"created carol@{DOMAIN} through the running server" in out
    await clients.login(f"carol@{DOMAIN}", "c4rol-pass")
    code, _out, err = await nitro(config_file, "user", "add", "carol", "--password-stdin", stdin="other!\n")
    assert code == 1
    assert "already exists" in err
    code, _out, err = await nitro(config_file, "user", "add", "no spaces", "--password-stdin", stdin="x\n")
    assert code == 2
    assert "invalid username" in err


async def test_without_a_server_the_commands_say_so_and_user_works_on_storage(config_file: Path) -> None:
    code, _out, err = await nitro(config_file, "status")
    assert code == 1
    assert "no server is running" in err
    code, out, err = await nitro(config_file, "user", "add", "dave", "--password-stdin", stdin="d4ve-pass\n")
    assert code == 0, err
    assert out.strip() == f"created dave@{DOMAIN}"


async def raw_request(server: Server, data: bytes) -> bytes:
    path = socket_path(server.config)
    assert path is not None
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("request_line", "expected"),
    [
        (b"not json\n", b'"code":"bad-request"'),
        (b"[1, 2]\n", b'"code":"bad-request"'),
        (b'{"command": "format-disk"}\n', b"unknown command 'format-disk'"),
        (b'{"command": "user-add", "username": "eve", "credentials": []}\n', b"bad credentials"),
        (
            b'{"command": "user-add", "username": "eve", "credentials": [{"hash": "MD5"}]}\n',
            b"unknown hash 'MD5'",
        ),
        (b'{"command": "user-del", "username": "a b"}\n', b"invalid username"),
    ],
)
async def test_bad_requests_are_answered_with_an_error(
    server: Server, request_line: bytes, expected: bytes
) -> None:
    answer = await raw_request(server, request_line)
    assert b'"ok":false' in answer
    assert expected in answer
    assert (await call(server.config, "status"))["bound"] == 0  # the channel still serves


async def test_a_stale_socket_is_replaced_and_a_live_one_is_left_to_its_server(config: Config) -> None:
    path = socket_path(config)
    assert path is not None
    path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a killed server leaves
    async with started_server(config) as first:
        assert (await call(config, "status"))["pid"] == os.getpid()
        other = path.parent.parent / "second"
        other.mkdir()
        # Another node started with its own ports, but whose [admin] socket is the same file.
        second_config = dataclasses.replace(load_config(write_config(other)), file=config.file)
        async with started_server(second_config) as second:
            assert second is not first
            assert (await call(config, "status"))["pid"] == os.getpid()  # the first one still answers
        assert path.exists()  # the second did not remove the first one's socket
        assert (await call(config, "status"))["bound"] == 0
    assert not path.exists()
    with pytest.raises(NotRunning):
        await call(config, "status")


@pytest.mark.cluster
async def test_status_lists_every_node_of_the_ring(tmp_path: Path, redis_servers: list[RedisServer]) -> None:
    ring = {"instances": [s.url for s in redis_servers], "prefix": "admin", "health_interval": 0.2}
    first = make_config(tmp_path, redis=ring, admin={"socket": "one.sock"})
    second = make_config(tmp_path, redis=ring, admin={"socket": "two.sock"})
    async with started_server(first) as one, started_server(second) as two:
        assert one.tiers is not None
        assert two.tiers is not None
        nodes = {one.tiers.node_id, two.tiers.node_id}
        await wait_for_async(lambda: _nodes(first), nodes)
        assert (await call(second, "status"))["node"] == two.tiers.node_id
        pool = Clients(two)
        try:
            alice = await pool.user("alice")
            await pool.login(alice)
            assert (await call(first, "sessions"))["sessions"] == []  # this node's sessions only
            (row,) = (await call(second, "sessions"))["sessions"]
            assert row["jid"].startswith(f"{alice}/")
        finally:
            await pool.close_all()


async def _nodes(config: Config) -> set[str]:
    return set((await call(config, "status"))["nodes"])


async def wait_for_async(probe: Any, expected: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (found := await probe()) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"{found} != {expected}"
        await asyncio.sleep(0.1)
