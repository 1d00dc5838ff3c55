"""Configuration: every shipped file loads; mistakes are start-up errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from nitro.config import ConfigError, load_config, parse_config

CONFIG_DIR = Path(__file__).parent.parent / "config"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    assert config.server.domain


def test_defaults_match_the_commented_default_file() -> None:
    assert load_config(CONFIG_DIR / "nitro.toml") == parse_config({})


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
        ({"registration": {"throttle_exempt": ["localhost"]}}, "[registration].throttle_exempt: 'localhost'"),
        ({"registration": {"throttle_exempt": ["10.0.0.0/33"]}}, "[registration].throttle_exempt"),
        ({"roster": {"max_items": -1}}, "[roster].max_items must not be negative"),
        ({"pep": {"max_items_per_account": -5}}, "[pep].max_items_per_account must not be negative"),
        ({"private": {"max_namespaces": -1}}, "[private].max_namespaces must not be negative"),
        ({"archive": {"retention_days": -7}}, "[archive].retention_days must not be negative"),
        ({"pep": {"max_nodes": 0}}, "[pep].max_nodes must be at least 1"),
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
