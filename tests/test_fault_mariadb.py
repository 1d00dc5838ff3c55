"""MariaDB goes away under traffic between slixmpp clients, twice: frozen (SIGSTOP) for 10 s, then killed
(SIGKILL) and restarted 10 s later. Clients get errors, not silence; nothing acknowledged is lost; other
sessions keep chatting; logins that need SQL fail with <temporary-auth-failure/>; and everything works
again afterwards without restarting Nitro. The test runs its own `mariadbd` and signals only that pid.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
import slixmpp
from conftest import Clients, free_port, make_config, resolve, result_of, wait_for
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET

from nitro.config import Config
from nitro.server import Server

pytestmark = [pytest.mark.slow, pytest.mark.fault]

OUTAGE = 10.0  # seconds MariaDB stays away
ANSWER_WITHIN = 20.0  # every request gets an answer (result or error) within this; never silence
ROSTER = "jabber:iq:roster"


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.fail(f"{name} is needed (Debian: mariadb-server; `make system-deps` installs it as root)")
    return found


@dataclasses.dataclass
class OwnMariaDB:
    """A mariadbd of this test's own: its datadir under tmp_path, a free loopback port."""

    datadir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"mysql+asyncmy://root@127.0.0.1:{self.port}/nitro"

    def install(self) -> None:
        user = ["--user=root"] if os.getuid() == 0 else []
        subprocess.run(
            [
                _binary("mariadb-install-db"),
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *user,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        user = ["--user=root"] if os.getuid() == 0 else []
        self.process = subprocess.Popen(
            [
                _binary("mariadbd"),
                "--no-defaults",
                f"--datadir={self.datadir}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.datadir}/mariadbd.sock",
                f"--pid-file={self.datadir}/mariadbd.pid",
                f"--log-error={self.datadir}/error.log",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
                *user,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(300):  # up to 30 s, crash recovery included
            if self.process.poll() is not None:
                log = (self.datadir / "error.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"mariadbd exited with {self.process.returncode}: {log}")
            try:
                pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=1).close()
                return
            except pymysql.err.OperationalError:
                time.sleep(0.1)
        pytest.fail("mariadbd did not accept connections within 30 s")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)  # our own child, by its pid

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture
def own_mariadb(tmp_path: Path) -> Iterator[OwnMariaDB]:
    server = OwnMariaDB(datadir=tmp_path / "mariadb", port=free_port())
    server.install()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def config(tmp_path: Path, own_mariadb: OwnMariaDB) -> Config:
    # Short timeouts so a frozen server fails requests quickly instead of holding them.
    storage = {"dsn": own_mariadb.dsn, "connect_timeout": 2.0, "query_timeout": 2.0, "pool_timeout": 2.0}
    return make_config(tmp_path, storage=storage)


@dataclasses.dataclass
class Traffic:
    """Alice's requests that need SQL, and what came back for each."""

    alice: slixmpp.ClientXMPP
    carol: str
    message_errors: set[str] = dataclasses.field(default_factory=set)
    roster_acked: list[str] = dataclasses.field(default_factory=list)
    roster_errors: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    offline_acked: list[str] = dataclasses.field(default_factory=list)
    offline_errors: list[str] = dataclasses.field(default_factory=list)
    sent: int = 0

    def __post_init__(self) -> None:
        self.alice.add_event_handler("message_error", lambda msg: self.message_errors.add(msg["id"]))

    async def roster_set(self) -> None:
        self.sent += 1
        contact = f"friend{self.sent}@localhost"
        iq = self.alice.Iq()
        iq["type"] = "set"
        iq.append(ET.fromstring(f"<query xmlns='{ROSTER}'><item jid='{contact}' name='Friend 🎉'/></query>"))
        try:
            await iq.send(timeout=ANSWER_WITHIN)  # IqTimeout (silence) fails the test
        except IqError as error:
            self.roster_errors.append((error.iq["error"]["type"], error.iq["error"]["condition"]))
        else:
            self.roster_acked.append(contact)

    async def offline_message(self) -> None:
        """A message for offline Carol; a ping after it tells when the server has dealt with it."""
        self.sent += 1
        body = f"offline {self.sent} ✉️"
        message = self.alice.make_message(mto=self.carol, mbody=body, mtype="chat")
        message["id"] = f"m{self.sent}"
        message.send()
        await self.alice.plugin["xep_0199"].send_ping(slixmpp.JID("localhost"), timeout=ANSWER_WITHIN)
        await asyncio.sleep(0.05)
        (self.offline_errors if f"m{self.sent}" in self.message_errors else self.offline_acked).append(body)

    async def round(self) -> None:
        await self.roster_set()
        await self.offline_message()


async def chat_keeps_flowing(alice: slixmpp.ClientXMPP, bob: slixmpp.ClientXMPP, n: int) -> None:
    """Alice and Bob are both online: their messages need no SQL and must arrive."""
    arrived = asyncio.get_running_loop().create_future()

    def on_message(message: Any) -> None:
        if message["body"] == f"live {n}" and not arrived.done():
            arrived.set_result(True)

    bob.add_event_handler("message", on_message)
    try:
        alice.send_message(mto=slixmpp.JID(bob.boundjid.bare), mbody=f"live {n}", mtype="chat")
        await asyncio.wait_for(arrived, ANSWER_WITHIN)
    finally:
        bob.del_event_handler("message", on_message)


async def login_outcome(clients: Clients, jid: str) -> str:
    """'ok', or the SASL failure condition of the first failed attempt."""
    client = clients.make(jid)
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    client.add_event_handler("session_start", lambda _e: resolve(outcome, "ok"))
    client.add_event_handler("failed_auth", lambda failure: resolve(outcome, failure["condition"]))
    await clients.connect(client)
    result = await asyncio.wait_for(outcome, ANSWER_WITHIN)
    client.abort()
    return result


async def during(seconds: float, step: Callable[[], Awaitable[None]]) -> int:
    """Run `step` again and again for `seconds` (bounded); how many times it ran."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    runs = 0
    while loop.time() < deadline:
        await step()
        runs += 1
        await asyncio.sleep(0.1)  # a refused request returns at once: do not spin the CPU
    return runs


@pytest.fixture
async def people(server: Server, clients: Clients) -> tuple[Traffic, slixmpp.ClientXMPP]:
    alice = await clients.login(await clients.user("alice"), plugins=["xep_0199"])
    bob = await clients.login(await clients.user("bob"))
    await clients.user("dave")
    traffic = Traffic(alice, carol=await clients.user("carol"))
    return traffic, bob


async def test_mariadb_frozen_then_killed_under_traffic(
    clients: Clients, own_mariadb: OwnMariaDB, people: tuple[Traffic, slixmpp.ClientXMPP]
) -> None:
    traffic, bob = people
    alice = traffic.alice
    await traffic.round()
    await chat_keeps_flowing(alice, bob, 0)
    assert (len(traffic.roster_acked), len(traffic.offline_acked)) == (1, 1)

    for outage in ("SIGSTOP", "SIGKILL"):
        errors_before = len(traffic.roster_errors)
        if outage == "SIGSTOP":
            own_mariadb.signal(signal.SIGSTOP)
        else:
            own_mariadb.kill()
        assert await login_outcome(clients, "dave@localhost") == "temporary-auth-failure"
        rounds = await during(OUTAGE, traffic.round)
        await chat_keeps_flowing(alice, bob, rounds)  # the sessions that were up stay up
        if outage == "SIGSTOP":
            own_mariadb.signal(signal.SIGCONT)
        else:
            await asyncio.to_thread(own_mariadb.start)  # same datadir: InnoDB crash recovery
        # Every request during the outage got an answer, and the roster sets got the RFC 6120 error.
        new_errors = traffic.roster_errors[errors_before:]
        assert new_errors, f"no roster set failed during {outage}"
        assert set(new_errors) == {("wait", "internal-server-error")}

        # Back without restarting Nitro: the next requests succeed at once.
        acked = len(traffic.roster_acked), len(traffic.offline_acked)
        await traffic.round()
        assert (len(traffic.roster_acked), len(traffic.offline_acked)) == (acked[0] + 1, acked[1] + 1)
        assert await login_outcome(clients, "dave@localhost") == "ok"

    assert traffic.offline_errors, "no offline message was refused while MariaDB was away"

    # Nothing acknowledged was lost: every roster set that got a result is on the roster...
    roster = await result_of(alice.get_roster(timeout=ANSWER_WITHIN))
    stored = set(roster["roster"]["items"].keys())
    assert {str(jid) for jid in stored} >= set(traffic.roster_acked)
    # ...and Carol gets every offline message that was not refused, in order.
    received: list[str] = []
    carol = await clients.login(
        traffic.carol, setup=lambda c: c.add_event_handler("message", lambda m: received.append(m["body"]))
    )
    await wait_for(lambda: len(received) >= len(traffic.offline_acked), timeout=ANSWER_WITHIN)
    assert [body for body in received if body in traffic.offline_acked] == traffic.offline_acked
    assert carol.is_connected()
