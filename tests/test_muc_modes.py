"""The muc plugin run by the server's supervisor: `inprocess`, and `process` killed with SIGKILL under
traffic (the persistent room comes back with its configuration and affiliations; occupants rejoin)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from conftest import Clients, started_server, wait_for
from muc_helpers import MUC, create_room, join_error, muc_config, room_jid, user
from plugin_helpers import SECRET, config_file
from slixmpp import JID
from slixmpp.exceptions import IqError


async def test_inprocess(tmp_path: Path) -> None:
    async with started_server(muc_config(tmp_path, mode="inprocess")) as server:
        clients = Clients(server)
        try:
            alice, _ = await user(clients, "alice")
            bob, bob_in = await user(clients, "bob")
            await create_room(alice, "lobby", "Alice")
            await bob.plugin["xep_0045"].join_muc_wait(room_jid("lobby"), "Bob", timeout=10)
            alice.send_message(mto=room_jid("lobby"), mbody="in process", mtype="groupchat")
            await bob_in.wait(lambda s: s.name == "message" and s["body"] == "in process")
        finally:
            await clients.close_all()


async def test_process_killed_under_traffic(tmp_path: Path) -> None:
    entry = {"mode": "process", "subdomain": MUC, "secret": SECRET}
    async with started_server(config_file(tmp_path, {"muc": entry}, queue_timeout=30.0)) as server:
        assert server.bridge is not None
        supervisor = server.bridge.supervisor
        assert supervisor is not None
        await wait_for(lambda: server.bridge is not None and server.bridge.plugins["muc"].connected, 20)
        clients = Clients(server)
        try:
            alice, _ = await user(clients, "alice")
            bob, bob_in = await user(clients, "bob")
            carol, _ = await user(clients, "carol")
            await create_room(alice, "desk", "Alice", {"persistentroom": True, "membersonly": True})
            await alice.plugin["xep_0045"].set_affiliation(
                room_jid("desk"), "member", jid=JID("bob@localhost")
            )
            await bob.plugin["xep_0045"].join_muc_wait(room_jid("desk"), "Bob", timeout=10)
            first = supervisor.processes["muc"].pid
            for n in range(10):
                alice.send_message(mto=room_jid("desk"), mbody=f"m{n}", mtype="groupchat")
                if n == 4:
                    os.kill(first, signal.SIGKILL)  # the child the server started, by its pid
                await asyncio.sleep(0.02)
            await wait_for(lambda: getattr(supervisor.processes.get("muc"), "pid", first) != first, 30)
            await wait_for(lambda: server.bridge is not None and server.bridge.plugins["muc"].connected, 30)
            # XEP-0410: Bob's self-ping tells him he is no longer joined, so his client rejoins
            with pytest.raises(IqError) as dropped:
                await bob.plugin["xep_0199"].send_ping(JID(f"desk@{MUC}/Bob"), timeout=10)
            assert dropped.value.condition in ("not-acceptable", "item-not-found")
            await alice.plugin["xep_0045"].join_muc_wait(room_jid("desk"), "Alice", timeout=10)
            await bob.plugin["xep_0045"].join_muc_wait(room_jid("desk"), "Bob", timeout=10)  # still a member
            assert await join_error(carol, "desk", "Carol") == "registration-required"  # still members-only
            alice.send_message(mto=room_jid("desk"), mbody="back", mtype="groupchat")
            await bob_in.wait(lambda s: s.name == "message" and s["body"] == "back", timeout=10)
        finally:
            await clients.close_all()
