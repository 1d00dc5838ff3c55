"""An XEP-0227 export written by Prosody's own tools, for the import tests and their committed fixture.

Debian's Prosody runs on loopback in a private directory (its own config, data path and pid file).
The accounts are made with `prosodyctl register`; their roster, vCard, private XML, PEP and archive
through real slixmpp clients (Prosody 0.12's xep0227 driver has no offline store, so offline messages
stay behind). Prosody is stopped and `prosody-migrator` copies its internal storage to its `xep0227`
storage driver (mod_storage_xep0227), one `<user>@<host>.xml` file per account. The Debian script
hard-codes its data directory (/var/lib/prosody), which is where that driver reads and writes; a copy
with only that constant pointed at the private directory is run instead.

`prosody_logs_in` goes the other way: XEP-0227 files (Nitro's `export --per-user`) into a fresh
Prosody with the same migrator, then a login there. Run `python -m tests.prosody_export DIR` to write
the files again (tests/fixtures/prosody-0.12/ holds the ones the tests use).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import slixmpp

from integration.loadgen.process import running
from integration.prosody import ProsodySetup, ensure_installed, lua_string, write_config
from nitro.transports.tls import ensure_certificate

DOMAIN = "localhost"
PASSWORDS = {"alice": "alice-s3cret", "bob": "bob-s3cret", "carol": "carol-s3cret"}
MIGRATOR = Path("/usr/bin/prosody-migrator")
# What Prosody 0.12's xep0227 driver can write: no "offline" store (its offline messages stay behind).
STORES = (
    "accounts",
    "roster",
    "vcard",
    "private",
    "archive-archive",
    "pep-pubsub",
)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(command: list[str], **kwargs: Any) -> str:
    result: subprocess.CompletedProcess[str] = subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, **kwargs
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result.stdout


async def _client(port: int, cert: Path, name: str, plugins: tuple[str, ...] = ()) -> slixmpp.ClientXMPP:
    client = slixmpp.ClientXMPP(f"{name}@{DOMAIN}/export", PASSWORDS[name])
    for plugin in ("xep_0030", *plugins):
        client.register_plugin(plugin)
    client.ca_certs = cert
    client.enable_direct_tls = False
    started = asyncio.get_running_loop().create_future()

    def on_start(_event: Any) -> None:
        if not started.done():
            started.set_result(True)

    client.add_event_handler("session_start", on_start)
    client.connect("127.0.0.1", port)
    await asyncio.wait_for(started, 20)
    return client


async def _disconnect(client: slixmpp.ClientXMPP) -> None:
    await asyncio.wait_for(client.disconnect(wait=1.0), 10)


async def _fill(port: int, cert: Path) -> None:
    """What each account holds at export time (see tests/test_xep0227.py for what is checked)."""
    bob = await _client(port, cert, "bob")
    bob.send_presence()
    alice = await _client(port, cert, "alice", ("xep_0054", "xep_0049", "xep_0163", "xep_0172", "xep_0313"))
    alice.send_presence()
    # Roster with a name and a group, and a mutual subscription with bob (RFC 6121 §3).
    roster_set = alice.update_roster(slixmpp.JID(f"bob@{DOMAIN}"), name="Bob", groups=["Friends"])
    assert roster_set is not None  # None only for components
    await roster_set
    bob.add_event_handler(
        "presence_subscribe", lambda p: bob.send_presence(pto=p["from"].bare, ptype="subscribed")
    )
    alice.add_event_handler(
        "presence_subscribe", lambda p: alice.send_presence(pto=p["from"].bare, ptype="subscribed")
    )
    alice.send_presence(pto=f"bob@{DOMAIN}", ptype="subscribe")
    await asyncio.sleep(1.0)
    bob.send_presence(pto=f"alice@{DOMAIN}", ptype="subscribe")
    await asyncio.sleep(1.0)
    # vCard (XEP-0054), private XML (XEP-0049), a PEP item (XEP-0172 nickname), an archived chat.
    vcard = alice.plugin["xep_0054"].make_vcard()
    vcard["FN"] = "Alice Liddell"
    vcard["NICKNAME"] = "alice"
    await alice.plugin["xep_0054"].publish_vcard(vcard)
    storage = slixmpp.xmlstream.ET.fromstring(
        "<storage xmlns='storage:rosternotes'><note jid='bob@localhost'>met at the tea party</note></storage>"
    )
    await alice.plugin["xep_0049"].store(storage)  # type: ignore[arg-type]  # it appends plain XML too
    await alice.plugin["xep_0172"].publish_nick("Queen Alice")
    alice.send_message(mto=slixmpp.JID(f"bob@{DOMAIN}"), mbody="hello bob", mtype="chat")
    await asyncio.sleep(1.0)
    await _disconnect(bob)
    await asyncio.sleep(0.5)
    alice.send_message(mto=slixmpp.JID(f"bob@{DOMAIN}"), mbody="while you were out", mtype="chat")  # offline
    await asyncio.sleep(1.0)
    # A subscription request from carol that alice has not answered (pending in, RFC 6121 §3.1.3).
    await _disconnect(alice)
    carol = await _client(port, cert, "carol")
    carol.send_presence(pto=f"alice@{DOMAIN}", ptype="subscribe")
    await asyncio.sleep(1.0)
    await _disconnect(carol)


def _migrate(directory: Path, xep0227_files: Path, *, to_xep0227: bool) -> None:
    """prosody-migrator between the internal storage in directory/data and XEP-0227 files (the
    driver reads and writes `<user>@<host>.xml` in Prosody's data directory, hence the patched copy)."""
    script = directory / "prosody-migrator.lua"
    text = MIGRATOR.read_text()
    assert "CFG_DATADIR='/var/lib/prosody';" in text, "the Debian script changed: look again"
    script.write_text(
        text.replace("CFG_DATADIR='/var/lib/prosody';", f"CFG_DATADIR={lua_string(str(xep0227_files))};")
    )
    # Reading an archive from xep0227 files fails on the host-level pass in 0.12.3 ("no 227 user element
    # found"): the archive is only migrated towards XEP-0227.
    names = STORES if to_xep0227 else tuple(store for store in STORES if store != "archive-archive")
    stores = "; ".join(lua_string(store) for store in names)
    internal = f"type = 'internal'; path = {lua_string(str(directory / 'data'))};"
    xep0227 = "type = 'xep0227';"
    config = directory / "migrator.cfg.lua"
    source, target = (internal, xep0227) if to_xep0227 else (xep0227, internal)
    hosts = f"hosts = {{ [{lua_string(DOMAIN)}] = {{ {stores} }} }};"
    config.write_text(f"input {{ {hosts} {source} }}\noutput {{ {target} }}\n")
    _own(directory)
    _run(["lua5.4", str(script), "--config", str(config), "input", "output"])


def _own(directory: Path) -> None:
    """As root, Prosody, prosodyctl and the migrator switch to the `prosody` user: give it the files."""
    if os.geteuid() == 0:
        for path in [directory, *directory.rglob("*")]:
            shutil.chown(path, "prosody", "prosody")


def _export(directory: Path) -> Path:
    """prosody-migrator, internal storage → xep0227 files under directory/export."""
    out = directory / "export"
    out.mkdir()
    _migrate(directory, out, to_xep0227=True)
    return out


async def prosody_logs_in(directory: Path, xep0227_files: Path, jid: str, password: str) -> list[str]:
    """Import `xep0227_files` (one `<user>@<host>.xml` each) into a fresh Prosody with prosody-migrator,
    run it, log `jid` in with `password` (SCRAM-SHA-1, Prosody's hash); the bare JIDs of its roster."""
    binary, config, port, user = _prepare(directory, register=False)
    _migrate(directory, xep0227_files, to_xep0227=False)
    log = directory / "prosody.log"
    with running(
        [binary, "-F", "--config", str(config)], port=port, log=log, cwd=directory, cpus=None, user=user
    ):
        client = slixmpp.ClientXMPP(f"{jid}/import", password, sasl_mech="SCRAM-SHA-1")
        client.ca_certs = directory / "tls" / "cert.pem"
        client.enable_direct_tls = False
        started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def on_start(_event: Any) -> None:
            if not started.done():
                started.set_result(True)

        def on_failure(_event: Any) -> None:
            if not started.done():
                started.set_exception(AssertionError("auth failed"))

        client.add_event_handler("session_start", on_start)
        client.add_event_handler("failed_all_auth", on_failure)
        client.connect("127.0.0.1", port)
        try:
            await asyncio.wait_for(started, 20)
            roster = await client.get_roster()
            assert roster is not None  # None only for an IQ that expects no answer
            return sorted(str(item["jid"]) for item in roster["roster"])
        finally:
            await _disconnect(client)


async def make_export(directory: Path) -> Path:
    """Run Prosody in `directory`, fill three accounts, export; returns the directory of XEP-0227 files."""
    binary, config, port, user = _prepare(directory)
    log = directory / "prosody.log"
    with running(
        [binary, "-F", "--config", str(config)], port=port, log=log, cwd=directory, cpus=None, user=user
    ):
        await _fill(port, directory / "tls" / "cert.pem")
    return _export(directory)


def _prepare(directory: Path, *, register: bool = True) -> tuple[str, Path, int, str | None]:
    """Config, certificate, accounts (prosodyctl register); the binary, config, port and user to run as."""
    binary = ensure_installed()
    directory.mkdir(parents=True, exist_ok=True)
    tls = directory / "tls"
    ensure_certificate(tls / "cert.pem", tls / "key.pem", DOMAIN)
    port = free_port()
    setup = ProsodySetup(port, DOMAIN, True, tls / "cert.pem", tls / "key.pem", archive=True)
    config = write_config(directory, setup)
    (directory / "data").mkdir()
    log = directory / "prosody.log"
    log.touch()
    user = "prosody" if os.geteuid() == 0 else None
    _own(directory)
    for name, password in PASSWORDS.items() if register else ():
        _run(["prosodyctl", "--config", str(config), "register", name, DOMAIN, password])
    return binary, config, port, user


if __name__ == "__main__":
    target = Path(sys.argv[1])
    exported = asyncio.run(make_export(target / "prosody"))
    for file in sorted(exported.iterdir()):
        shutil.copy(file, target / file.name)
        print(target / file.name)
