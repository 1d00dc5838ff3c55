"""Logins of one account take turns (issue 11 item 2): at most `[c2s] max_logins_per_account` streams of an
account are between SASL naming it and the end of their bind (or resume) at a time; the others wait there,
unread, and give up their server-wide negotiation slot meanwhile. One account logging in a thousand times
at once then advances a few logins at a time instead of filling the event loop, and other accounts' logins
and the sessions already up keep their share.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Turn:
    """One stream's place among its account's logins; `leave` (idempotent) lets the next one in."""

    __slots__ = ("_leave",)

    def __init__(self, leave: Callable[[], None]) -> None:
        self._leave: Callable[[], None] | None = leave

    def leave(self) -> None:
        leave, self._leave = self._leave, None
        if leave is not None:
            leave()


class AccountLogins:
    """Per account, a semaphore of `per_account()` turns, forgotten when nobody holds or awaits one."""

    def __init__(self, per_account: Callable[[], int]) -> None:
        self._per_account = per_account
        self._accounts: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    def busy(self, username: str) -> bool:
        """Every turn of the account is taken: a new login would wait."""
        entry = self._accounts.get(username)
        return entry is not None and entry[0].locked()

    async def enter(self, username: str) -> Turn:
        """Wait for a turn of `username` (the caller bounds the wait)."""
        entry = self._accounts.get(username)
        if entry is None:
            entry = self._accounts[username] = (asyncio.Semaphore(max(1, self._per_account())), [0])
        semaphore, users = entry
        users[0] += 1
        try:
            await semaphore.acquire()
        except BaseException:
            self._forget(username, entry)
            raise

        def leave() -> None:
            semaphore.release()
            self._forget(username, entry)

        return Turn(leave)

    def _forget(self, username: str, entry: tuple[asyncio.Semaphore, list[int]]) -> None:
        entry[1][0] -= 1
        if entry[1][0] == 0 and self._accounts.get(username) is entry:
            del self._accounts[username]
