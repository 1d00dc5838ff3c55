"""A real Debian client against Nitro: go-sendxmpp logs in over STARTTLS and sends bob a message."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import PASSWORD, Clients, wait_for
from test_message import online

from nitro.server import Server

RUN_TIMEOUT = 30.0


async def test_go_sendxmpp_sends_bob_a_message(server: Server, clients: Clients, tmp_path: Path) -> None:
    binary = shutil.which("go-sendxmpp")
    if binary is None:
        pytest.skip("go-sendxmpp is not installed (Debian package go-sendxmpp)")
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    _bob, inbox = await online(clients, bob_jid)
    cert = server.config.path(server.config.tls.cert)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "SSL_CERT_FILE": str(cert)}

    # STARTTLS (no -t) to the test port; the certificate is verified: Go reads extra roots from SSL_CERT_FILE,
    # and go-sendxmpp checks it against the JID's domain, which the self-signed certificate names.
    process = await asyncio.create_subprocess_exec(
        binary,
        "--username", alice_jid,
        "--password", PASSWORD,
        "--jserver", f"127.0.0.1:{server.config.c2s.port}",
        "--timeout", "10",
        bob_jid,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(b"Hello from go-sendxmpp\n"), RUN_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, (stdout + stderr).decode(errors="replace")

    await wait_for(lambda: len(inbox) == 1)
    message = inbox[0]
    assert message["body"].strip() == "Hello from go-sendxmpp"
    assert message["from"].bare == alice_jid
    assert str(message["to"]) == bob_jid


async def test_the_readme_example_works_with_debian_go_sendxmpp(server: Server, clients: Clients) -> None:
    """The command the README shows, with this test's port and password, run by a shell."""
    if shutil.which("go-sendxmpp") is None:
        pytest.skip("go-sendxmpp is not installed (Debian package go-sendxmpp)")
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    [example] = [line for line in readme.splitlines() if "| go-sendxmpp " in line]
    await clients.user("alice")
    _bob, inbox = await online(clients, await clients.user("bob"))
    command = example.replace("127.0.0.1:5222", f"127.0.0.1:{server.config.c2s.port}")
    command = command.replace("PASSWORD", shlex.quote(PASSWORD))
    process = await asyncio.create_subprocess_exec(
        "sh", "-c", command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, output.decode(errors="replace")
    await wait_for(lambda: len(inbox) == 1)
    assert inbox[0]["body"].strip() == "hello bob"
