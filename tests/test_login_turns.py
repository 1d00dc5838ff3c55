"""Logins of one account take turns (`[c2s] max_logins_per_account`, nitro/core/logins.py): past the limit a
stream waits, unread, between SASL naming the account and the end of an earlier stream's bind; another
account is not held up; a stream that gives up its turn (bind, failure, disconnect) lets the next one in.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import PASSWORD, Clients, make_config, read_until, started_server
from test_c2s import HEADER, opened, plain

from nitro.server import Server

BIND = b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"


async def authenticating(
    server: Server, username: str, password: str = PASSWORD
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A Direct TLS stream that has sent its SASL PLAIN auth (PLAIN names the account at once)."""
    reader, writer = await opened(server)
    writer.write(plain(username, password))
    return reader, writer


async def test_a_second_login_of_an_account_waits_for_the_first_to_bind(tmp_path: Path) -> None:
    config = make_config(tmp_path, c2s={"max_logins_per_account": 1})
    async with started_server(config) as server:
        for name in ("alice", "bob"):
            await Clients(server).user(name)
        first, first_writer = await authenticating(server, "alice")
        await read_until(first, b"<success")  # holds alice's one turn until it has bound
        second, second_writer = await authenticating(server, "alice")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(second.read(65536), 0.5)  # not answered: waiting for its turn
        other, other_writer = await authenticating(server, "bob")
        await read_until(other, b"<success")  # another account is not held up
        first_writer.write(HEADER)
        await read_until(first, b"</stream:features>")
        first_writer.write(BIND)
        await read_until(first, b"</iq>")
        await read_until(second, b"<success")  # the first bound: the second's turn
        for writer in (first_writer, second_writer, other_writer):
            writer.close()


@pytest.mark.parametrize("leaves", ["wrong password", "disconnect"])
async def test_a_login_that_ends_before_binding_gives_its_turn_back(tmp_path: Path, leaves: str) -> None:
    config = make_config(tmp_path, c2s={"max_logins_per_account": 1})
    async with started_server(config) as server:
        await Clients(server).user("alice")
        if leaves == "wrong password":
            first, first_writer = await authenticating(server, "alice", "not the password")
            await read_until(first, b"<failure")
        else:
            first, first_writer = await authenticating(server, "alice")
            await read_until(first, b"<success")
        second, second_writer = await authenticating(server, "alice")
        if leaves == "disconnect":
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(second.read(65536), 0.5)
            first_writer.transport.abort()
        await read_until(second, b"<success")
        first_writer.close()
        second_writer.close()
