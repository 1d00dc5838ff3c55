"""`nitro check`: one line per finding, exit 1 on any error; it reads and never creates anything."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from conftest import free_port
from cryptography import x509
from redis_servers import RedisServer, redis_servers
from sqlbackends import MARIADB_URL, SqlBackend
from test_cli import nitro
from test_tls_material import write_pair

from nitro.config import Config, load_config
from nitro.ops.check import run_checks
from nitro.storage.sql import alembic_config, open_sql_storage
from nitro.transports.tls import ensure_certificate

NEWEST = ScriptDirectory.from_config(alembic_config()).get_current_head()  # the newest migration's revision

__all__ = ["redis_servers"]


def write(tmp_path: Path, extra: str = "") -> Path:
    """A config in tmp_path/etc with relative paths (data in tmp_path/var), free ports; `extra` appended."""
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    config = etc / "nitro.toml"
    config.write_text(
        f"""
[storage]
dsn = "sqlite+aiosqlite:///../var/nitro.db"
[c2s]
port = {free_port()}
direct_tls_port = {free_port()}
[tls]
cert = "../var/tls/cert.pem"
key = "../var/tls/key.pem"
[metrics]
port = {free_port()}
{extra}
"""
    )
    return config


async def check(config: Path) -> list[str]:
    return [str(finding) async for finding in run_checks(config)]


def having(findings: list[str], prefix: str) -> list[str]:
    return [line for line in findings if line.startswith(prefix)]


async def prepared(tmp_path: Path, extra: str = "") -> tuple[Path, Config]:
    """A config whose database is migrated and whose certificate exists, as after a first start."""
    path = write(tmp_path, extra)
    config = load_config(path)
    async with open_sql_storage(config.storage.dsn):
        pass
    ensure_certificate(config.path(config.tls.cert), config.path(config.tls.key), config.server.domain)
    return path, config


def test_a_fresh_install_passes_with_warnings_and_check_creates_nothing(tmp_path: Path) -> None:
    config = write(tmp_path)
    result = nitro(config, "check")
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert all(line.startswith(("ok: ", "warn: ")) for line in lines), lines
    assert having(lines, "ok: config: ")
    assert having(lines, "warn: tls: neither ")
    assert f"warn: storage: {tmp_path / 'var' / 'nitro.db'} does not exist" in result.stdout
    assert len(having(lines, "ok: ports: ")) == 3
    assert not (tmp_path / "var").exists()  # no database, no certificate, no directory


async def test_a_started_install_is_all_ok_but_its_self_signed_certificate(tmp_path: Path) -> None:
    path, config = await prepared(tmp_path)
    findings = await check(path)
    assert having(findings, "error:") == []
    assert having(findings, "warn:") == [
        f"warn: tls: {config.path(config.tls.cert)} is self-signed: clients must be told to trust it"
    ]
    assert f"ok: storage: schema at the newest revision ({NEWEST})" in findings
    assert having(findings, "ok: tls: ")[0].endswith(f"{config.path(config.tls.key)} matches it")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[server]\nport = 1\n", "unknown key 'port'"),
        ("[redis]\nsocket_timeout = 0\n", "[redis].socket_timeout must be positive"),
    ],
)
def test_a_config_error_is_one_error_line_and_exit_1(tmp_path: Path, extra: str, message: str) -> None:
    result = nitro(write(tmp_path, extra), "check")
    assert result.returncode == 1
    [line] = result.stdout.splitlines()
    assert line.startswith("error: config: ")
    assert message in line


def test_port_70000_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "nitro.toml"
    config.write_text("[c2s]\nport = 70000\n")
    result = nitro(config, "check")
    assert result.returncode == 1
    assert result.stdout == f"error: config: {config}: [c2s].port must be between 0 and 65535, got 70000\n"


async def test_a_port_in_use_is_an_error(tmp_path: Path) -> None:
    path, config = await prepared(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", config.c2s.port))
        taken.listen()
        findings = await check(path)
    assert having(findings, "error:") == [
        f"error: ports: c2s (STARTTLS) cannot listen on 127.0.0.1:{config.c2s.port}: the port is in use "
        "(by a running Nitro, or another program)"
    ]


@pytest.mark.parametrize(
    ("names", "days", "expected"),
    [
        ([x509.DNSName("example.org")], 90, "error: tls: {cert}: the certificate does not cover localhost"),
        ([x509.DNSName("localhost")], -2, "error: tls: {cert}: the certificate expired on"),
        ([x509.DNSName("localhost")], 5, "warn: tls: {cert}: the certificate expires on"),
    ],
)
async def test_certificate_names_and_expiry(
    tmp_path: Path, names: list[x509.GeneralName], days: int, expected: str
) -> None:
    path, config = await prepared(tmp_path)
    cert = config.path(config.tls.cert)
    for file in (cert, config.path(config.tls.key)):
        file.unlink()
    write_pair(cert.parent, names=names, valid_days=days)
    findings = await check(path)
    assert having(findings, expected.format(cert=cert))


async def test_a_key_that_does_not_match_and_a_missing_key_are_errors(tmp_path: Path) -> None:
    path, config = await prepared(tmp_path)
    cert, key = config.path(config.tls.cert), config.path(config.tls.key)
    other = tmp_path / "other"
    write_pair(other)
    key.write_bytes((other / "key.pem").read_bytes())
    assert f"error: tls: {key}: this private key does not belong to the certificate in {cert}" in await check(
        path
    )
    key.unlink()
    [missing] = having(await check(path), "error: tls: ")
    assert f"TLS key file {key} does not exist, but {cert} does" in missing
    assert not key.exists()  # check generates nothing


async def test_a_world_readable_key_is_a_warning(tmp_path: Path) -> None:
    path, config = await prepared(tmp_path)
    key = config.path(config.tls.key)
    key.chmod(0o644)
    assert f"warn: tls: {key} can be read by every user (mode 644): chmod 600 (or 640) it" in await check(
        path
    )


async def test_schema_behind_is_a_warning_and_an_unknown_revision_an_error(tmp_path: Path) -> None:
    path, _config = await prepared(tmp_path)
    database = tmp_path / "var" / "nitro.db"
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0002_im_features'")
    connection.close()
    assert (
        f"warn: storage: schema at 0002_im_features, newest is {NEWEST}: the next start (or "
        "`nitro db upgrade`) migrates it"
    ) in await check(path)
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
    connection.close()
    [line] = having(await check(path), "error:")
    assert line.startswith("error: storage: schema revision 0099_from_the_future is unknown to this Nitro")


async def test_a_file_that_is_not_a_database_is_an_error(tmp_path: Path) -> None:
    path, _config = await prepared(tmp_path)
    (tmp_path / "var" / "nitro.db").write_bytes(b"not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / "var" / f"nitro.db{suffix}").unlink(missing_ok=True)
    [line] = having(await check(path), "error:")
    assert line.startswith(f"error: storage: cannot open {tmp_path / 'var' / 'nitro.db'}: ")


async def test_each_redis_instance_is_checked(tmp_path: Path, redis_servers: list[RedisServer]) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    urls = [server.url for server in redis_servers[:2]] + [down]
    path, _config = await prepared(
        tmp_path, f"[redis]\ninstances = {urls!r}\nsocket_timeout = 0.5\n".replace("'", '"')
    )
    findings = await check(path)
    assert [line.split(" (Redis")[0] for line in having(findings, "ok: redis:")] == [
        f"ok: redis: {url} answers" for url in urls[:2]
    ]
    [unreachable] = having(findings, "error:")
    assert unreachable.startswith(f"error: redis: {down} does not answer: ")


async def test_mariadb_unreachable_missing_and_migrated(tmp_path: Path, mariadb_backend: SqlBackend) -> None:
    nowhere = f"mysql+asyncmy://root@127.0.0.1:{free_port()}/nitro"
    path = write(tmp_path, "")
    text = path.read_text().replace('"sqlite+aiosqlite:///../var/nitro.db"', '"DSN"')
    cases = [
        (nowhere, "error: storage: cannot open mysql+asyncmy://root@127.0.0.1:"),
        (f"{MARIADB_URL}/nitro_check_absent", "warn: storage: mysql+asyncmy://"),
        (mariadb_backend.dsn, "ok: storage: schema at the newest revision"),
    ]
    async with open_sql_storage(mariadb_backend.dsn):  # migrated
        pass
    for dsn, expected in cases:
        path.write_text(text.replace('"DSN"', f'"{dsn}"'))
        findings = await check(path)
        assert having(findings, expected), findings


def test_check_is_in_the_help() -> None:
    assert "check the config, certificates, storage" in nitro(Path("/dev/null"), "--help").stdout
