"""Configuration: every shipped file loads; mistakes are start-up errors that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from nitro.config import Config, ConfigError, load_config, parse_config

CONFIG_DIR = Path(__file__).parent.parent / "config"
REPOSITORY = CONFIG_DIR.parent


def sqlite_file(config: Config) -> Path:
    database = make_url(config.storage.dsn).database
    assert database is not None
    return Path(database)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    assert config.server.domain


def test_defaults_match_the_commented_default_file() -> None:
    shipped = load_config(CONFIG_DIR / "nitro.toml")
    defaults = parse_config({}, base_dir=REPOSITORY)  # the built-in defaults, run from the repository
    # The file's "../var/…" (relative to config/) names the files the defaults' "var/…" names from the
    # repository's root: `make run` keeps its data where it always did.
    assert (
        sqlite_file(shipped).resolve() == sqlite_file(defaults).resolve() == REPOSITORY / "var" / "nitro.db"
    )
    for key in ("cert", "key"):
        assert shipped.path(getattr(shipped.tls, key)).resolve() == defaults.path(getattr(defaults.tls, key))
    web_client = shipped.path(shipped.http.web_client_dir).resolve()
    assert (
        web_client
        == defaults.path(defaults.http.web_client_dir)
        == REPOSITORY / "var" / "web" / "converse.js"
    )
    http = dataclasses.replace(shipped.http, web_client_dir=defaults.http.web_client_dir)
    # the shipped file enables the echo and muc plugins (`make run` starts them); the defaults have none
    assert [entry.name for entry in shipped.plugins.entries] == ["echo", "muc"]
    plugins = dataclasses.replace(shipped.plugins, entries=())
    same_paths = dataclasses.replace(
        shipped, base_dir=REPOSITORY, storage=defaults.storage, tls=defaults.tls, http=http, plugins=plugins
    )
    assert same_paths == defaults


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"c2s": {"prot": 5222}}, "unknown key 'prot'"),
        ({"nonsense": {}}, "unknown section [nonsense]"),
        ({"c2s": {"port": "5222"}}, "[c2s].port: expected int"),
        ({"c2s": {"require_encryption": 1}}, "[c2s].require_encryption: expected bool"),
        ({"c2s": {"port": True}}, "[c2s].port: expected an integer"),
        ({"server": {"domain": "not a domain"}}, "[server].domain"),
        ({"server": {"domain": "user@host"}}, "must be a bare domain"),
        ({"server": {"admins": ["bad jid@x"]}}, "[server].admins"),
        ({"server": {"admins": "admin@localhost"}}, "expected a list"),
        ({"c2s": {"max_stanza_bytes": 100}}, "at least 10000"),
        ({"logging": {"level": "LOUD"}}, "[logging].level"),
        ({"c2s": {"port": 70000}}, "[c2s].port must be between 0 and 65535, got 70000"),
        ({"c2s": {"direct_tls_port": -1}}, "[c2s].direct_tls_port must be between 0 and 65535"),
        (
            {"c2s": {"port": 5333, "direct_tls_port": 5333}},
            "[c2s].port and [c2s].direct_tls_port are both 5333",
        ),
        ({"metrics": {"port": 5222}}, "[metrics].port 5222 is also a [c2s] port on 127.0.0.1"),
        ({"c2s": {"negotiation_timeout": 0}}, "[c2s].negotiation_timeout must be positive, got 0"),
        ({"c2s": {"write_timeout": -1.0}}, "[c2s].write_timeout must be positive"),
        ({"c2s": {"backlog": 0}}, "[c2s].backlog must be at least 1"),
        ({"auth": {"scram_iterations": 1000}}, "[auth].scram_iterations must be at least 4096"),
        ({"auth": {"throttle_window": 0}}, "[auth].throttle_window must be positive"),
        ({"registration": {"max_per_address": 0}}, "[registration].max_per_address must be at least 1"),
        ({"offline": {"quota": -5}}, "[offline].quota must be at least 0"),
        ({"stream_management": {"ack_request_every": 0}}, "[stream_management].ack_request_every"),
        ({"archive": {"retention_days": -1}}, "[archive].retention_days must be at least 0"),
        ({"pep": {"max_items_per_node": 0}}, "[pep].max_items_per_node must be at least 1"),
        ({"vcard": {"max_bytes": 0}}, "[vcard].max_bytes must be at least 1"),
        ({"registration": {"throttle_exempt": ["localhost"]}}, "[registration].throttle_exempt: 'localhost'"),
        ({"registration": {"throttle_exempt": ["10.0.0.0/33"]}}, "[registration].throttle_exempt"),
        ({"roster": {"max_items": -1}}, "[roster].max_items must be at least 0, got -1"),
        ({"pep": {"max_items_per_account": -5}}, "[pep].max_items_per_account must be at least 0"),
        ({"pep": {"max_nodes": 0}}, "[pep].max_nodes must be at least 1"),
        ({"private": {"max_namespaces": -1}}, "[private].max_namespaces must be at least 0"),
    ],
)
def test_mistakes_name_the_key(document: dict[str, dict[str, object]], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(document)
    assert message in str(raised.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[c2s\nport = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_integers_are_accepted_for_seconds() -> None:
    assert parse_config({"c2s": {"ping_timeout": 5}}).c2s.ping_timeout == 5.0


def test_zero_ports_and_zero_resume_timeout_are_allowed() -> None:
    config = parse_config(
        {"c2s": {"port": 0, "direct_tls_port": 0}, "stream_management": {"resume_timeout": 0}}
    )
    assert (config.c2s.port, config.c2s.direct_tls_port, config.stream_management.resume_timeout) == (
        0,
        0,
        0.0,
    )


def test_relative_paths_follow_the_config_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "nitro.toml").write_text(
        '[storage]\ndsn = "sqlite+aiosqlite:///data/nitro.db?timeout=3"\n'
        '[tls]\ncert = "tls/cert.pem"\nkey = "/srv/tls/key.pem"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for given in (etc / "nitro.toml", Path("../etc/nitro.toml")):
        config = load_config(given)
        assert config.base_dir.is_absolute()
        assert sqlite_file(config).resolve() == etc / "data" / "nitro.db"
        assert make_url(config.storage.dsn).query == {"timeout": "3"}
        assert config.path(config.tls.cert).resolve() == etc / "tls" / "cert.pem"
        assert config.path(config.tls.key) == Path("/srv/tls/key.pem")


@pytest.mark.parametrize(
    "dsn",
    [
        "sqlite+aiosqlite:////srv/nitro/nitro.db",
        "sqlite+aiosqlite:///:memory:",
        "mysql+asyncmy://nitro:pw@127.0.0.1:3306/nitro",
    ],
)
def test_absolute_memory_and_server_dsns_are_kept(tmp_path: Path, dsn: str) -> None:
    config_file = tmp_path / "nitro.toml"
    config_file.write_text(f'[storage]\ndsn = "{dsn}"\n')
    assert load_config(config_file).storage.dsn == dsn


def test_without_a_config_file_paths_stay_relative_to_the_working_directory() -> None:
    config = load_config(None)
    assert config.storage.dsn == "sqlite+aiosqlite:///var/nitro.db"
    assert config.path(config.tls.cert) == Path("var/tls/cert.pem")
