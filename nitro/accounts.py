"""Account operations shared by the CLI, in-band registration and admin commands."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from nitro.core.events import ACCOUNT_DELETED, AccountEvent
from nitro.storage import Storage
from nitro.xmpp.errors import StreamError
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.sasl.credentials import derive_all

if TYPE_CHECKING:
    from nitro.core.context import Core


class InvalidUsername(ValueError):
    """The name cannot be a JID localpart (RFC 7622 §3.3)."""


def prepare_username(username: str, domain: str) -> str:
    try:
        local = JID.make(username, domain).local
    except InvalidJID as exc:
        raise InvalidUsername(str(exc)) from exc
    assert local is not None
    return local


async def create_account(storage: Storage, username: str, password: str, *, iterations: int = 4096) -> None:
    """Store only SCRAM-derived secrets (SHA-1 and SHA-256), never the password; raises AlreadyExists."""
    credentials = await asyncio.to_thread(derive_all, password, iterations=iterations)
    await storage.accounts.create(username, credentials)


async def change_password(storage: Storage, username: str, password: str, *, iterations: int = 4096) -> bool:
    credentials = await asyncio.to_thread(derive_all, password, iterations=iterations)
    return await storage.accounts.set_credentials(username, credentials)


async def delete_account(server: Core, username: str) -> bool:
    """Delete the account and everything stored for it, then end its sessions."""
    deleted = await server.storage.accounts.delete(username)
    if deleted:
        for session in server.sessions.sessions_of(JID.make(username, server.domain)):
            await session.close(StreamError("not-authorized", "account deleted"))
        await server.bus.notify(ACCOUNT_DELETED, AccountEvent(username))
    return deleted
