"""Reload (SIGHUP, `nitro reload`): the config file is read again while serving; what needs a restart is
named."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import slixmpp
from conftest import DOMAIN, PASSWORD, Clients, started_server
from slixmpp.exceptions import IqError
from test_admin_channel import nitro, write_config
from test_cli import serve
from test_register import condition, raw_client, register_iq

from nitro.config import load_config
from nitro.ops.channel import pid_path
from nitro.server import Server
from nitro.transports.tls import ensure_certificate
from nitro.xmpp import ns

SERVER_JID = slixmpp.JID(DOMAIN)  # whom XEP-0092 version requests go to


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path, '[logging]\nlevel = "INFO"\n[offline]\nquota = 1000\n')


@pytest.fixture
async def server(config_file: Path) -> AsyncIterator[Server]:
    root = logging.getLogger()
    level = root.level
    try:
        async with started_server(load_config(config_file)) as running:
            yield running
    finally:
        root.setLevel(level)  # a reload may change the process's log level


@pytest.fixture
async def clients(server: Server) -> AsyncIterator[Clients]:
    pool = Clients(server)
    yield pool
    await pool.close_all()


async def test_reload_applies_what_it_can_and_names_what_needs_a_restart(
    server: Server, config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port, dsn = server.config.c2s.port, server.config.storage.dsn
    edit(config_file, 'level = "INFO"', 'level = "DEBUG"')
    edit(config_file, "quota = 1000", "quota = 5")
    edit(config_file, "[c2s]\n", "[c2s]\nidle_ping_after = 100.0\n")
    edit(config_file, f"port = {port}", f"port = {port + 1}")
    edit(config_file, "/nitro.db", "/other.db")
    edit(config_file, "[server]\n", "[server]\nadmins = ['boss@localhost']\n")
    append(config_file, "[registration]\nopen = false\n")

    with caplog.at_level(logging.INFO, logger="nitro.ops.reload"):
        report = server.reload()

    assert report.error is None
    assert report.failed == ()
    for key in ("[logging].level", "[offline].quota", "[c2s].idle_ping_after", "[server].admins"):
        assert key in report.applied
    assert "module register reloaded" in report.applied
    assert set(report.restart_needed) == {"[c2s].port", "[storage].dsn"}
    assert server.config.c2s.port == port  # the running values stay
    assert server.config.storage.dsn == dsn
    assert server.config.offline.quota == 5
    assert server.config.c2s.idle_ping_after == 100.0
    assert logging.getLogger().level == logging.DEBUG
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == ["configuration reloaded; these need a restart to change: [storage].dsn, [c2s].port"]
    async with raw_client(server) as (client, features):  # [registration] open = false applies at once
        assert features.find(f"{{{ns.REGISTER_FEATURE}}}register") is None
        assert condition(await client.iq(register_iq("henry", PASSWORD))) == "service-unavailable"


async def test_an_invalid_file_changes_nothing(server: Server, config_file: Path) -> None:
    before = server.config
    edit(config_file, "quota = 1000", "quota = 'many'")

    report = server.reload()

    assert report.error is not None
    assert "[offline].quota: expected int" in report.error
    assert server.config is before
    code, _out, err = await nitro(config_file, "reload")  # the command reads the file first, and refuses
    assert code == 2
    assert "[offline].quota: expected int" in err


async def test_a_renewed_certificate_serves_new_connections(
    server: Server, clients: Clients, tmp_path: Path
) -> None:
    alice = await clients.user("alice")
    before = await clients.login(alice)  # on the old certificate, stays up
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    cert.unlink()
    key.unlink()
    ensure_certificate(cert, key, DOMAIN)  # a renewal: new key and certificate at the same paths
    trusting_new = ssl.create_default_context(cafile=str(cert))
    with pytest.raises(ssl.SSLCertVerificationError):  # not served before the reload
        await direct_tls(server, trusting_new)

    report = server.reload()

    assert report.certificate == str(cert)
    await direct_tls(server, trusting_new)  # Direct TLS listener (XEP-0368)
    await clients.login(alice)  # STARTTLS, trusting only the new certificate
    await clients.login(alice, direct_tls=True)
    assert before.is_connected()


async def test_a_broken_certificate_is_refused_and_the_old_one_stays(server: Server, tmp_path: Path) -> None:
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    trusting_old = ssl.create_default_context(cafile=str(cert))
    key.write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")

    report = server.reload()

    assert len(report.failed) == 1
    assert report.failed[0].startswith("TLS certificate not reloaded, the running one stays")
    await direct_tls(server, trusting_old)


async def direct_tls(server: Server, context: ssl.SSLContext) -> None:
    _reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1", server.config.c2s.direct_tls_port, ssl=context, server_hostname=DOMAIN
        ),
        5,
    )
    writer.close()


async def test_modules_are_enabled_and_disabled_where_safe(
    server: Server, clients: Clients, config_file: Path
) -> None:
    alice = await clients.user("alice")
    client = await clients.login(alice, plugins=["xep_0092"])
    assert (await client.plugin["xep_0092"].get_version(SERVER_JID))["software_version"]["name"] == "Nitro"
    append(config_file, '[modules]\ndisabled = ["version", "presence"]\n')

    report = server.reload()

    assert "module version unloaded" in report.applied
    assert report.restart_needed == ("[modules].disabled: presence",)
    assert "presence" in server.modules
    assert "version" not in server.modules
    with pytest.raises(IqError) as refused:
        await client.plugin["xep_0092"].get_version(SERVER_JID)
    assert refused.value.iq["error"]["condition"] == "service-unavailable"

    edit(config_file, '["version", "presence"]', "[]")
    report = server.reload()

    assert "module version loaded" in report.applied
    assert (await client.plugin["xep_0092"].get_version(SERVER_JID))["software_version"]["name"] == "Nitro"


async def test_nitro_reload_goes_through_the_admin_socket(server: Server, config_file: Path) -> None:
    edit(config_file, "quota = 1000", "quota = 7")

    code, out, err = await nitro(config_file, "reload")

    assert code == 0, err
    assert out.splitlines()[0] == "reloaded: [offline].quota"
    assert out.splitlines()[1].startswith("TLS certificate read again from ")
    assert server.config.offline.quota == 7
    assert server.reloads == 1


@pytest.mark.slow
async def test_sighup_reloads_instead_of_killing_and_nitro_reload_signals_without_a_socket(
    tmp_path: Path,
) -> None:
    config_file = write_config(tmp_path)
    edit(config_file, 'socket = "run/admin.sock"', 'socket = ""')
    process = await serve(config_file)
    assert process.stdout is not None
    try:
        while b"serving localhost" not in await asyncio.wait_for(process.stdout.readline(), 30):
            pass
        pid_file = pid_path(load_config(config_file))
        assert pid_file is not None
        assert pid_file.read_text().strip() == str(process.pid)

        os.kill(process.pid, signal.SIGHUP)
        await read_line_with(process, b"configuration reloaded from")

        edit(config_file, "[metrics]\n", "[metrics]\nenabled = false\n")
        code, out, err = await nitro(config_file, "reload")
        assert code == 0, err
        assert f"sent SIGHUP to {process.pid}" in out
        await read_line_with(process, b"these need a restart to change: [metrics].enabled")
        assert process.returncode is None
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    assert not pid_file.exists()


async def read_line_with(process: asyncio.subprocess.Process, text: bytes) -> bytes:
    assert process.stdout is not None
    while True:
        line = await asyncio.wait_for(process.stdout.readline(), 15)
        assert line, f"the server exited before logging {text!r}"
        if text in line:
            return line
