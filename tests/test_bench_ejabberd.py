"""The ejabberd column of `make bench` (integration/ejabberd.py): its config and provisioning writers as
pure functions, the table with both peers, and a real Debian ejabberd started, logged in to, stopped."""

from __future__ import annotations

import asyncio
import base64
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import slixmpp

from integration.bench import parse_plan, print_results
from integration.bench_servers import free_port
from integration.ejabberd import (
    MODULES,
    EjabberdSetup,
    command,
    config_text,
    ensure_installed,
    provisioning_lines,
    running_ejabberd,
)
from integration.loadgen.accounts import ITERATIONS, PASSWORD, SALT, contacts
from integration.loadgen.scenarios import Result
from integration.peers import PeerUnavailable
from nitro.transports.tls import ensure_certificate
from nitro.xmpp.sasl.credentials import derive_credential

DOMAIN = "localhost"


def setup(tmp_path: Path, **changes: Any) -> EjabberdSetup:
    values: dict[str, Any] = {
        "port": 15222,
        "domain": DOMAIN,
        "starttls": False,
        "cert": tmp_path / "c.pem",
        "key": tmp_path / "k.pem",
    }
    return EjabberdSetup(**{**values, **changes})


def test_config_matches_the_other_servers_and_limits_nothing(tmp_path: Path) -> None:
    text = config_text(setup(tmp_path))
    lines = text.splitlines()
    assert 'hosts: ["localhost"]' in lines
    assert f'certfiles: ["{tmp_path}/c.pem", "{tmp_path}/k.pem"]' in lines
    assert "auth_password_format: scram" in lines
    assert "auth_scram_hash: sha" in lines
    assert "shaper: {}" in lines
    assert "shaper_rules: {}" in lines
    assert "max_fsm_queue: 1000000" in lines
    assert any(line.startswith("s2s_access: none") for line in lines)
    listener = text.split("listen:\n", 1)[1].split("\ns2s_access", 1)[0]
    for option in (
        "port: 15222",
        'ip: "127.0.0.1"',
        'module: "ejabberd_c2s"',
        'shaper: "none"',
        "starttls: true",
        "starttls_required: false",
        "backlog: 4096",
    ):
        assert option in listener
    assert "ejabberd_s2s_in" not in text
    assert "mod_mam" not in text
    assert all(f"  {name}: " in text for name in MODULES)


def test_config_requires_tls_archives_and_hashes_as_asked(tmp_path: Path) -> None:
    text = config_text(setup(tmp_path, starttls=True, archive=True, hash_name="SHA-256"))
    assert "starttls_required: true" in text
    assert '  mod_mam: {default: "always"}' in text.splitlines()
    assert "auth_scram_hash: sha256" in text.splitlines()


def test_provisioning_has_nitros_scram_keys_and_mutual_rosters() -> None:
    names = [f"u{i:05d}" for i in range(30)]
    header, *users = list(provisioning_lines(DOMAIN, names, roster_size=6))
    host, stored, server, salt, hash_name, iterations = header.rstrip("\n").split("\t")
    expected = derive_credential(PASSWORD, "SHA-1", salt=SALT, iterations=ITERATIONS)
    assert (host, hash_name, int(iterations)) == (DOMAIN, "sha", ITERATIONS)
    assert base64.b64decode(salt) == SALT
    assert base64.b64decode(stored) == expected.stored_key
    assert base64.b64decode(server) == expected.server_key
    rosters = {}
    for line in users:
        name, roster = line.rstrip("\n").split("\t")
        rosters[name] = roster.split(",")
    assert list(rosters) == names
    for index, name in enumerate(names):
        assert rosters[name] == [names[c] for c in contacts(index, len(names), 6)]
        assert all(name in rosters[contact] for contact in rosters[name])  # subscribed both ways


def test_provisioning_sha256_and_refuses_names_it_cannot_write() -> None:
    header = next(provisioning_lines(DOMAIN, ["a"], roster_size=0, hash_name="SHA-256"))
    stored = header.split("\t")[1]
    assert base64.b64decode(stored) == derive_credential(PASSWORD, "SHA-256", salt=SALT).stored_key
    for bad in ("a,b", "a\tb", ""):
        with pytest.raises(ValueError, match="provisioning file"):
            list(provisioning_lines(DOMAIN, ["ok", bad], roster_size=1))


def test_the_vm_gets_one_scheduler_per_pinned_core_and_no_busy_waiting(tmp_path: Path) -> None:
    argv = command("/usr/bin/erl", tmp_path, frozenset({1}))
    assert argv[argv.index("+S") + 1] == "1:1"
    assert argv[argv.index("+sbwt") + 1] == "none"
    assert argv[argv.index("dir") + 1] == f'"{tmp_path}/spool"'
    assert f'"{tmp_path}/accounts.tsv"' in argv[-1]


def test_the_table_has_a_ratio_column_per_peer(capsys: pytest.CaptureFixture[str]) -> None:
    results = [Result("Prosody 0.12"), Result("ejabberd 23.01"), Result("Nitro 1.0")]
    for result, value in zip(results, (100.0, 400.0, 200.0), strict=True):
        result.rows["logins/s"] = value
    print_results("login", results)
    header, _, row = capsys.readouterr().out.strip().splitlines()
    peers = ["Prosody", "0.12", "ejabberd", "23.01"]
    assert header.split() == ["metric", *peers, "Nitro", "1.0", "Nitro/Prosody", "Nitro/ejabberd"]
    assert row.split()[-2:] == ["2.00x", "0.50x"]


def test_compare_ejabberd_is_an_option_but_not_with_a_target() -> None:
    assert parse_plan(["--compare-ejabberd"]).compare_ejabberd
    assert not parse_plan([]).compare_ejabberd
    with pytest.raises(SystemExit):
        parse_plan(["--compare-ejabberd", "--target", "127.0.0.1:5222"])


# --- a real ejabberd ----------------------------------------------------------------------------------


async def roster_after_login(port: int, cafile: Path, jid: str) -> dict[str, str]:
    """Log `jid` in over STARTTLS with SCRAM-SHA-1 (slixmpp); its roster as {contact: subscription}."""
    client = slixmpp.ClientXMPP(jid, PASSWORD, sasl_mech="SCRAM-SHA-1")
    client.ca_certs = cafile
    client.enable_plaintext = False
    started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def on_start(_event: Any) -> None:
        if not started.done():
            started.set_result(True)

    def on_failure(_event: Any) -> None:
        if not started.done():
            started.set_exception(AssertionError(f"{jid}: authentication failed"))

    client.add_event_handler("session_start", on_start)
    client.add_event_handler("failed_all_auth", on_failure)
    client.connect("127.0.0.1", port)
    try:
        await asyncio.wait_for(started, 30)
        await client.get_roster(timeout=10)
        roster = client.client_roster
        return {contact: roster[contact]["subscription"] for contact in roster}
    finally:
        await asyncio.wait_for(client.disconnect(wait=1.0), 5)


def test_a_real_ejabberd_logs_in_a_provisioned_account_and_stops() -> None:
    try:
        ensure_installed()
    except PeerUnavailable as error:
        pytest.skip(f"ejabberd cannot be installed here: {error}")
    # As root, ejabberd runs as its own user: a directory it can reach (pytest's tmp_path is not).
    with tempfile.TemporaryDirectory(prefix="nitro-ejabberd-test-") as temporary:
        base = Path(temporary)
        base.chmod(0o711)
        run_ejabberd(base)


def run_ejabberd(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    ensure_certificate(cert, key, DOMAIN)
    names = ["u00000", "u00001", "u00002"]
    port = free_port()
    ejabberd = EjabberdSetup(port=port, domain=DOMAIN, starttls=True, cert=cert, key=key)
    cpus = frozenset(sorted(os.sched_getaffinity(0))[-1:])
    with running_ejabberd(tmp_path / "ejabberd", ejabberd, names, roster_size=20, cpus=cpus) as pid:
        assert Path(f"/proc/{pid}/exe").resolve().name == "beam.smp"  # the VM, not a wrapper
        assert os.sched_getaffinity(pid) == cpus
        roster = asyncio.run(roster_after_login(port, cert, f"u00001@{DOMAIN}"))
    assert roster == {f"u00000@{DOMAIN}": "both", f"u00002@{DOMAIN}": "both"}
    assert not Path(f"/proc/{pid}").exists()  # stopped (and reaped): it was our child
