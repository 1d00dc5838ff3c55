"""One SASL exchange (RFC 6120 §6) of a client session, checked against the account store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from nitro.storage.protocols import AccountStore
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.sasl import SaslFailure
from nitro.xmpp.sasl.credentials import HashName, verify_password
from nitro.xmpp.sasl.plain import parse_plain
from nitro.xmpp.sasl.scram import ScramServer

SCRAM_HASHES: dict[str, HashName] = {"SCRAM-SHA-256": "SHA-256", "SCRAM-SHA-1": "SHA-1"}


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes


@dataclass(frozen=True, slots=True)
class Success:
    username: str
    data: bytes | None  # additional data with success (SCRAM's server-final-message)


_HASHING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nitro-pbkdf2")


def mechanisms(*, encrypted: bool, allow_plain_without_tls: bool) -> list[str]:
    """The mechanisms offered on a stream, strongest first; PLAIN only over TLS unless configured."""
    offered = list(SCRAM_HASHES)
    if encrypted or allow_plain_without_tls:
        offered.append("PLAIN")
    return offered


def prepare_username(authcid: str, domain: str) -> str:
    """The account name for a SASL authcid: a JID localpart (RFC 7622 §3.3) or a failure."""
    try:
        local = JID.make(authcid, domain).local
    except InvalidJID as exc:
        raise SaslFailure("not-authorized", "not a valid username") from exc
    assert local is not None
    return local


class Authenticator:
    """Drives one mechanism's steps; raises SaslFailure on any failure (the session reports it)."""

    def __init__(
        self,
        mechanism: str,
        accounts: AccountStore,
        domain: str,
        admit: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.mechanism = mechanism
        self._admit = admit  # awaited once the username is known, before the account is looked up
        self._accounts = accounts
        self._domain = domain
        self._scram = ScramServer(SCRAM_HASHES[mechanism]) if mechanism in SCRAM_HASHES else None
        self._username: str | None = None

    async def step(self, data: bytes | None) -> Challenge | Success:
        if data is None:
            if self._username is None:
                return Challenge(b"")  # no initial response: ask for it (RFC 6120 §6.4.2)
            raise SaslFailure("malformed-request", "empty response")
        if self._scram is None:
            return await self._plain(data)
        if self._username is None:
            authcid = self._scram.client_first(data)
            self._username = prepare_username(authcid, self._domain)
            self._check_authzid(self._scram.authzid)
            if self._admit is not None:
                await self._admit(self._username)
            credentials = await self._accounts.get_credentials(self._username)
            credential = credentials.get(SCRAM_HASHES[self.mechanism]) if credentials else None
            return Challenge(self._scram.server_first(credential))
        server_final = self._scram.client_final(data)
        return Success(self._username, server_final)

    async def _plain(self, data: bytes) -> Success:
        authzid, authcid, password = parse_plain(data)
        username = prepare_username(authcid, self._domain)
        self._check_authzid(authzid, username)
        if self._admit is not None:
            await self._admit(username)
        credentials = await self._accounts.get_credentials(username)
        credential = credentials.get("SHA-256") or credentials.get("SHA-1") if credentials else None
        # PBKDF2 takes milliseconds: off the event loop, and on one thread of its own, so a login storm
        # hashes on one core and leaves the others to the sessions already up.
        loop = asyncio.get_running_loop()
        if credential is None or not await loop.run_in_executor(
            _HASHING, verify_password, password, credential
        ):
            raise SaslFailure("not-authorized")
        return Success(username, None)

    def _check_authzid(self, authzid: str | None, username: str | None = None) -> None:
        """An authzid is allowed only when it names the account itself (RFC 6120 §6.3.8)."""
        if not authzid:
            return
        username = username or self._username
        try:
            wanted = JID.parse(authzid)
        except InvalidJID as exc:
            raise SaslFailure("invalid-authzid") from exc
        if wanted.bare != JID.make(username, self._domain):
            raise SaslFailure("invalid-authzid")
