"""`[plugins]` and `[plugins.NAME]`: what the config accepts and each mistake it refuses, by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nitro.config import ConfigError, parse_config
from nitro.ops.check import run_checks

ECHO = {"mode": "inprocess", "subdomain": "echo.localhost", "secret": "s"}


def test_plugin_tables_and_their_own_keys() -> None:
    config = parse_config({"plugins": {"port": 6000, "echo": {**ECHO, "prefix": "> ", "limits": [1, 2]}}})
    entry = config.plugins.entry("echo")
    assert entry is not None
    assert (entry.mode, entry.subdomain, entry.module_name) == ("inprocess", "echo.localhost", "plugins.echo")
    assert entry.options == {"prefix": "> ", "limits": [1, 2]}
    assert config.plugins.port == 6000
    other = parse_config({"plugins": {"x": {**ECHO, "subdomain": "x.localhost", "module": "my.plugin"}}})
    assert other.plugins.entries[0].module_name == "my.plugin"


@pytest.mark.parametrize(
    ("plugins", "message"),
    [
        ({"prot": 1}, "[plugins]: unknown key 'prot'"),
        ({"entries": []}, "unknown key 'entries'"),
        ({"port": 70000}, "[plugins].port must be between"),
        ({"queue_timeout": 0}, "[plugins].queue_timeout must be positive"),
        ({"echo": {**ECHO, "mode": "thread"}}, "[plugins.echo].mode must be one of"),
        ({"echo": {**ECHO, "secret": ""}}, "[plugins.echo].secret is required"),
        ({"echo": {**ECHO, "subdomain": "localhost"}}, "must not be the server's own domain"),
        ({"echo": {**ECHO, "subdomain": "a@b"}}, "must be a bare domain"),
        ({"echo": {**ECHO, "secret": 5}}, "[plugins].echo.secret: expected str"),
        ({"echo": ECHO, "copy": ECHO}, "is also [plugins.echo]'s"),
        ({"allowed_peers": ["not an address"]}, "allowed_peers"),
        ({"echo": {**ECHO, "privileges": {"roster": "all"}}}, "privileges: roster must be one of"),
        (
            {"echo": {**ECHO, "privileges": {"presence": "roster"}}},
            "presence must be one of none, managed_entity",
        ),
        ({"echo": {**ECHO, "privileges": {"files": "all"}}}, "unknown access 'files'"),
        ({"echo": {**ECHO, "privileges": {"iq": {"urn:x": "put"}}}}, "iq must be a table"),
        ({"echo": {**ECHO, "failure_policy": "ajar"}}, "failure_policy must be open or closed"),
        ({"port": 5222, "echo": ECHO}, "[plugins].port 5222 is also [c2s].port"),
        ({"echo": {**ECHO, "spool": "d", "jetstream": "nats://x:4222"}}, "spool and jetstream"),
        ({"echo": {**ECHO, "jetstream": "http://x"}}, "jetstream must be a nats://"),
    ],
)
def test_bad_plugin_config_is_refused(plugins: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"plugins": plugins})
    assert message in str(raised.value)


async def test_check_reports_each_plugin(tmp_path: Path) -> None:
    path = tmp_path / "nitro.toml"
    path.write_text(
        f'[storage]\ndsn = "sqlite+aiosqlite:///{tmp_path}/n.db"\n[c2s]\nport = 0\ndirect_tls_port = 0\n'
        f'[metrics]\nport = 0\n[tls]\ncert = "{tmp_path}/c.pem"\nkey = "{tmp_path}/k.pem"\n'
        "[plugins]\nport = 0\n"
        '[plugins.echo]\nsubdomain = "echo.localhost"\nsecret = "s"\n'
        '[plugins.ghost]\nmode = "process"\nsubdomain = "g.localhost"\nsecret = "s"\n'
        '[plugins.far]\nmode = "external"\nsubdomain = "far.localhost"\nsecret = "s"\n'
    )
    findings = [str(finding) async for finding in run_checks(path)]
    assert "ok: plugins: echo (inprocess, echo.localhost): module plugins.echo found" in findings
    assert (
        "error: plugins: ghost (process, g.localhost): no module plugins.ghost on the Python path" in findings
    )
    assert any(f.startswith("ok: plugins: far (external, far.localhost): waited for") for f in findings)
