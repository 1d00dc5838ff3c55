"""Debian's Prosody on loopback for side-by-side benchmarks: install, configure, provision, run, stop.

The accounts and rosters are written as Prosody's own internal storage files (Lua tables under
data/<host>/accounts and data/<host>/roster), with the same salt, iteration count and contacts as
Nitro's, which is much faster than one `prosodyctl register` per user.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from integration.loadgen.accounts import ITERATIONS, PASSWORD, SALT, contacts
from integration.loadgen.process import running
from integration.loadgen.scram import HashName, salted_keys
from integration.peers import (
    PeerUnavailable,
    copy_certificate,
    ensure_package,
    hand_over,
    package_version,
    run_as,
)

# Prosody's counterparts of Nitro's built-in modules (presence, message, iq, offline and c2s load by
# themselves). mod_limits (rate limits) is deliberately absent, and s2s listens nowhere.
MODULES = (
    "disco",
    "roster",
    "saslauth",
    "tls",
    "ping",
    "time",
    "version",
    "register",
    "admin_adhoc",
    "carbons",
    "csi_simple",
    "blocklist",
    "smacks",
    "pep",
    "vcard_legacy",
    "private",
)


_ITEM = '{ ["subscription"] = "both"; ["groups"] = {}; }'


ProsodyUnavailable = PeerUnavailable  # what callers catch when Prosody cannot be installed


def ensure_installed() -> str:
    """The path of `prosody`, installing Debian's package first when it is missing and we are root."""
    return ensure_package("prosody", "prosody")


def version() -> str:
    return package_version("prosody")


def lua_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def _path_encode(text: str) -> str:
    # util/datamanager.lua: every non-alphanumeric character of host and user names becomes %xx.
    return "".join(c if c.isascii() and c.isalnum() else f"%{ord(c):02x}" for c in text)


@dataclass(frozen=True, slots=True)
class ProsodySetup:
    """What the Prosody run must match in the Nitro run."""

    port: int
    domain: str
    starttls: bool  # offer STARTTLS and require it (c2s_require_encryption), as Nitro does
    cert: Path
    key: Path
    hash_name: HashName = "SHA-1"  # internal_hashed keeps one hash: SCRAM-SHA-1 or SCRAM-SHA-256
    archive: bool = False  # load mod_mam (Nitro's MAM is on only with the same flag)
    backlog: int = 4096  # the listen backlog Nitro uses too


def write_config(directory: Path, setup: ProsodySetup) -> Path:
    modules = [*MODULES, *(["mam"] if setup.archive else [])]
    lines = [
        "-- Written by integration/prosody.py for a loopback benchmark; removed after the run.",
        f"data_path = {lua_string(str(directory / 'data'))}",
        f"pidfile = {lua_string(str(directory / 'prosody.pid'))}",
        'interfaces = { "127.0.0.1" }',
        f"c2s_ports = {{ {setup.port} }}",
        "c2s_direct_tls_ports = { }",
        "legacy_ssl_ports = { }",
        "s2s_ports = { }",
        "component_ports = { }",
        "http_ports = { }",
        "https_ports = { }",
        f"network_settings = {{ tcp_backlog = {setup.backlog}; nagle = false }}",
        f"modules_enabled = {{ {'; '.join(lua_string(m) for m in modules)} }}",
        "limits = { }",
        'authentication = "internal_hashed"',
        f"password_hash = {lua_string(setup.hash_name)}",
        'storage = "internal"',
        f"c2s_require_encryption = {'true' if setup.starttls else 'false'}",
        f"allow_unencrypted_plain_auth = {'false' if setup.starttls else 'true'}",
        "allow_registration = false",
        "default_archive_policy = true  -- only read when mod_mam is loaded (--archive)",
        f"certificates = {lua_string(str(directory))}",
        f"ssl = {{ certificate = {lua_string(str(setup.cert))}; key = {lua_string(str(setup.key))} }}",
        'log = { { levels = { min = "warn" }; to = "file"; filename = '
        + lua_string(str(directory / "prosody.log"))
        + " } }",
        "",
        f"VirtualHost {lua_string(setup.domain)}",
        f"    ssl = {{ certificate = {lua_string(str(setup.cert))}; key = {lua_string(str(setup.key))} }}",
        "",
    ]
    path = directory / "prosody.cfg.lua"
    path.write_text("\n".join(lines))
    return path


def write_accounts(
    directory: Path,
    domain: str,
    names: Sequence[str],
    *,
    roster_size: int,
    hash_name: HashName = "SHA-1",
    password: str = PASSWORD,
    iterations: int = ITERATIONS,
) -> None:
    """Accounts (mod_auth_internal_hashed) and rosters (rostermanager) as Prosody's data files."""
    host = directory / "data" / _path_encode(domain)
    (host / "accounts").mkdir(parents=True, exist_ok=True)
    (host / "roster").mkdir(parents=True, exist_ok=True)
    client_key, server_key = salted_keys(hash_name, password, SALT, iterations)
    # RFC 5802 §3: StoredKey = H(ClientKey); Prosody keeps both keys in hex.
    stored_key = hashlib.new("sha1" if hash_name == "SHA-1" else "sha256", client_key).hexdigest()
    account = (
        "return {\n"
        f'\t["iteration_count"] = {iterations};\n'
        f'\t["salt"] = {lua_string(SALT.decode("ascii"))};\n'
        f'\t["stored_key"] = {lua_string(stored_key)};\n'
        f'\t["server_key"] = {lua_string(server_key.hex())};\n'
        "};\n"
    )
    for index, name in enumerate(names):
        (host / "accounts" / f"{_path_encode(name)}.dat").write_text(account)
        roster = contacts(index, len(names), roster_size)
        items = "".join(f"\t[{lua_string(f'{names[c]}@{domain}')}] = {_ITEM};\n" for c in roster)
        (host / "roster" / f"{_path_encode(name)}.dat").write_text(
            f'return {{\n\t[false] = {{ ["version"] = {len(roster)}; ["pending"] = {{}}; }};\n{items}}};\n'
        )


@contextlib.contextmanager
def running_prosody(
    directory: Path,
    setup: ProsodySetup,
    names: Sequence[str],
    *,
    roster_size: int,
    cpus: frozenset[int] | None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Install if needed, write config and accounts under `directory`, run Prosody until exit.

    As root, Prosody runs as the `prosody` user the package creates (it refuses to run as root), so
    the directory, with a copy of the certificate and key, is handed to that user.
    """
    binary = ensure_installed()
    directory.mkdir(parents=True, exist_ok=True)
    user = run_as("prosody")
    if user is not None:
        cert, key = copy_certificate(directory, setup.cert, setup.key)
        setup = dataclasses.replace(setup, cert=cert, key=key)
    config = write_config(directory, setup)
    write_accounts(directory, setup.domain, names, roster_size=roster_size, hash_name=setup.hash_name)
    log = directory / "prosody.log"
    log.touch()
    hand_over(directory, user)
    command = [binary, "-F", "--config", str(config)]
    with running(command, port=setup.port, log=log, cwd=directory, cpus=cpus, user=user) as process:
        yield process
