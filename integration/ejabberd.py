"""Debian's ejabberd on loopback for side-by-side benchmarks: install, configure, provision, run, stop.

Configured like the Prosody of integration/prosody.py: the same domain, accounts (SCRAM with the same
salt, iteration count and keys: `auth_password_format: scram`), rosters (both directions subscribed),
TLS rule and certificate, no shapers or traffic limits, s2s off, mod_mam only with --archive.

Storage is ejabberd's default, its internal Mnesia (in-process, as Prosody's files and Nitro's SQLite
are). The accounts and rosters are written as one line each to a file that ejabberd_loader.erl, compiled
and run by an `-eval` in ejabberd's own VM right after start-up, turns into the `passwd` and `roster`
records of ejabberd_auth.hrl and mod_roster.hrl with one `mnesia:dirty_write` each: 2,000 users with
rosters of 20 (42,000 records) load in 1 to 2 s, where `ejabberdctl register` starts an Erlang VM per
user (~1 s apiece) and the SQL backends would need a driver Debian does not install (erlang-p1-sqlite3)
or a MariaDB round trip per query and another process off the pinned core.

The VM is started with `erl` directly (what `ejabberdctl foreground` runs), not distributed (no node
name, no epmd: nothing to clash with the system's ejabberd@localhost), with the config, spool, log and
crash dump in the run's directory. `erl` execs erlexec, which execs beam.smp, so the process we start
is the one whose CPU and memory are read; `beam_pid` checks that.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from integration.loadgen.accounts import ITERATIONS, PASSWORD, SALT, contacts
from integration.loadgen.process import running, tail
from integration.loadgen.scram import HashName, salted_keys
from integration.peers import (
    copy_certificate,
    ensure_package,
    hand_over,
    package_version,
    run_as,
)

ERL_LIBS = "/usr/lib/x86_64-linux-gnu"  # where Debian puts ejabberd-<version>/ (ejabberdctl sets the same)
LOAD_TIMEOUT = 120.0
PROVISIONING = "accounts.tsv"  # see provisioning_lines
LOADER = "nitro_bench_loader.erl"  # a copy of ejabberd_loader.erl, where ejabberd's user can read it
LOADED = "loaded"  # the marker file the loader writes once every record is in Mnesia

# ejabberd's counterparts of Prosody's MODULES (c2s, SASL, STARTTLS, presence, message and iq are built
# in). mod_register refuses registration as Prosody's allow_registration = false does; mod_pubsub with
# its pep plugin (and mod_caps) is PEP; mod_vcard_xupdate adds the avatar hash to presence as Prosody's
# vcard_legacy does; mod_blocking needs mod_privacy.
MODULES: dict[str, dict[str, object]] = {
    "mod_disco": {},
    "mod_roster": {},
    "mod_ping": {},
    "mod_time": {},
    "mod_version": {"show_os": False},
    "mod_register": {"access": "none"},
    "mod_adhoc": {},
    "mod_carboncopy": {},
    "mod_client_state": {},
    "mod_privacy": {},
    "mod_blocking": {},
    "mod_stream_mgmt": {},
    "mod_caps": {},
    "mod_pubsub": {"plugins": ["flat", "pep"]},
    "mod_vcard": {},
    "mod_vcard_xupdate": {},
    "mod_private": {},
    "mod_offline": {},
}


def ensure_installed() -> str:
    """The path of `erl` once Debian's ejabberd is installed (installing it first when root)."""
    ensure_package("ejabberd", "ejabberdctl")
    return ensure_package("erlang-base", "erl")


def version() -> str:
    return package_version("ejabberd")


@dataclass(frozen=True, slots=True)
class EjabberdSetup:
    """What the ejabberd run must match in the Nitro and Prosody runs."""

    port: int
    domain: str
    starttls: bool  # offer STARTTLS and require it (starttls_required), as Nitro and Prosody do
    cert: Path
    key: Path
    hash_name: HashName = "SHA-1"  # auth_scram_hash: one hash per host, as Prosody's internal_hashed
    archive: bool = False  # load mod_mam, archiving everything (Prosody's default_archive_policy = true)
    backlog: int = 4096  # the listen backlog Nitro uses too


def _yaml(value: object) -> str:
    """A YAML scalar or flow collection (JSON is valid YAML here; booleans and names stay bare)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def config_text(setup: EjabberdSetup) -> str:
    modules = dict(MODULES)
    if setup.archive:
        modules["mod_mam"] = {"default": "always"}
    listener = {
        "port": setup.port,
        "ip": "127.0.0.1",
        "module": "ejabberd_c2s",
        "backlog": setup.backlog,
        "starttls": True,
        "starttls_required": setup.starttls,
        "shaper": "none",
        "access": "c2s",
    }
    lines = [
        "# Written by integration/ejabberd.py for a loopback benchmark; removed after the run.",
        f"hosts: {_yaml([setup.domain])}",
        "loglevel: warning",
        "hide_sensitive_log_data: true",
        f"certfiles: {_yaml([str(setup.cert), str(setup.key)])}",
        "acme: {auto: false}",
        "listen:",
        "  - " + "\n    ".join(f"{k}: {_yaml(v)}" for k, v in listener.items()),
        "s2s_access: none  # no s2s listener either: federation is off, as in the other runs",
        "auth_method: [internal]",
        "auth_password_format: scram",
        f"auth_scram_hash: {'sha256' if setup.hash_name == 'SHA-256' else 'sha'}",
        "default_db: mnesia",
        "negotiation_timeout: 300  # as Nitro's run: a slow login storm is measured, not cut",
        "# No traffic limits: no shapers defined, c2s `shaper: none`, queues far above any burst here.",
        "shaper: {}",
        "shaper_rules: {}",
        "max_fsm_queue: 1000000",
        "access_rules:",
        "  c2s: {allow: all}",
        "modules:",
        *(f"  {name}: {_yaml(options)}" for name, options in modules.items()),
        "",
    ]
    return "\n".join(lines)


def provisioning_lines(
    domain: str,
    names: Sequence[str],
    *,
    roster_size: int,
    hash_name: HashName = "SHA-1",
    password: str = PASSWORD,
    iterations: int = ITERATIONS,
) -> Iterator[str]:
    """What ejabberd_loader.erl reads, tab-separated: first the domain and the #scram{} fields (base64
    StoredKey, ServerKey and salt, as ejabberd_auth keeps them; hash; iterations), shared by every
    account; then one line per account, its localpart and its contacts' localparts separated by commas."""
    client_key, server_key = salted_keys(hash_name, password, SALT, iterations)
    digest = "sha1" if hash_name == "SHA-1" else "sha256"
    stored_key = hashlib.new(digest, client_key).digest()  # RFC 5802 §3: StoredKey = H(ClientKey)
    keys = [base64.b64encode(v).decode() for v in (stored_key, server_key, SALT)]
    for text in (domain, *names):
        if not text or any(c in text for c in "\t\n,"):
            raise ValueError(f"{text!r} cannot be written to ejabberd's provisioning file")
    yield "\t".join([domain, *keys, "sha" if hash_name == "SHA-1" else "sha256", str(iterations)]) + "\n"
    for index, name in enumerate(names):
        roster = ",".join(names[c] for c in contacts(index, len(names), roster_size))
        yield f"{name}\t{roster}\n"


def loader(directory: Path) -> str:
    """The `-eval` run once ejabberd has started (`-s ejabberd` returns when every module is up):
    compile ejabberd_loader.erl (copied into `directory`) and load the provisioning file with it."""
    source, provisioning, marker = (json.dumps(str(directory / n)) for n in (LOADER, PROVISIONING, LOADED))
    return (
        f"{{ok, M, Bin}} = compile:file({source}, [binary, report]), "
        f"{{module, M}} = code:load_binary(M, {source}, Bin), "
        f"M:load({provisioning}, {marker})."
    )


def command(erl: str, directory: Path, cpus: frozenset[int] | None) -> list[str]:
    """`erl` as `ejabberdctl foreground` runs it, plus the loader; one scheduler per core we pin it to,
    and no scheduler busy-waiting (its spinning would count as ejabberd's CPU and steal the core)."""
    schedulers = len(cpus) if cpus else os.cpu_count() or 1
    return [
        erl,
        "-noinput",
        "+K",
        "true",
        "+P",
        "250000",
        "+S",
        f"{schedulers}:{schedulers}",
        "+sbwt",
        "none",
        "+sbwtdcpu",
        "none",
        "+sbwtdio",
        "none",
        "-env",
        "ERL_MAX_PORTS",
        "65536",
        "-mnesia",
        "dir",
        json.dumps(str(directory / "spool")),
        "-s",
        "ejabberd",
        "-eval",
        loader(directory),
    ]


def run_environment(directory: Path, config: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HOME": str(directory),
        "ERL_LIBS": ERL_LIBS,
        "EJABBERD_CONFIG_PATH": str(config),
        "EJABBERD_LOG_PATH": str(directory / "ejabberd.log"),
        "EJABBERD_PID_PATH": str(directory / "ejabberd.pid"),
        "ERL_CRASH_DUMP": str(directory / "erl_crash.dump"),
        "ERL_CRASH_DUMP_BYTES": "0",
    }


def beam_pid(pid: int) -> int:
    """The beam.smp process: `pid` itself (erl and erlexec exec it), or its one beam.smp descendant."""
    pending = [pid]
    while pending:
        current = pending.pop(0)
        with contextlib.suppress(OSError):
            if os.path.basename(os.readlink(f"/proc/{current}/exe")).startswith("beam"):
                return current
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                pending.extend(int(child) for child in children)
    raise RuntimeError(f"no beam.smp process at or under pid {pid}")


def wait_loaded(process: subprocess.Popen[bytes], marker: Path, log: Path) -> None:
    deadline = time.monotonic() + LOAD_TIMEOUT
    while not marker.exists():
        if process.poll() is not None:
            raise RuntimeError(f"ejabberd exited with {process.returncode} while loading:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"ejabberd did not load its accounts in {LOAD_TIMEOUT:g} s:\n{tail(log)}")
        time.sleep(0.1)


@contextlib.contextmanager
def running_ejabberd(
    directory: Path,
    setup: EjabberdSetup,
    names: Sequence[str],
    *,
    roster_size: int,
    cpus: frozenset[int] | None,
) -> Iterator[int]:
    """Install if needed, write config and records under `directory`, run ejabberd with its accounts
    loaded; yields the beam.smp pid. As root it runs as the package's `ejabberd` user."""
    erl = ensure_installed()
    directory.mkdir(parents=True, exist_ok=True)
    user = run_as("ejabberd")
    if user is not None:
        cert, key = copy_certificate(directory, setup.cert, setup.key)
        setup = dataclasses.replace(setup, cert=cert, key=key)
    config = directory / "ejabberd.yml"
    config.write_text(config_text(setup))  # logs, spool: see run_environment
    with open(directory / PROVISIONING, "w") as provisioning:
        provisioning.writelines(
            provisioning_lines(setup.domain, names, roster_size=roster_size, hash_name=setup.hash_name)
        )
    shutil.copy(Path(__file__).with_name("ejabberd_loader.erl"), directory / LOADER)
    (directory / "spool").mkdir(exist_ok=True)
    log = directory / "erl.log"  # the VM's own output; ejabberd logs to ejabberd.log
    log.touch()
    hand_over(directory, user)
    with running(
        command(erl, directory, cpus),
        port=setup.port,
        log=log,
        cwd=directory,
        cpus=cpus,
        env=run_environment(directory, config),
        user=user,
    ) as process:
        wait_loaded(process, directory / LOADED, log)
        yield beam_pid(process.pid)
