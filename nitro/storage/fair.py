"""Fair shares of the SQL pool: at most a few storage calls per account at a time (issue 11 item 2).

The pool of SQL connections is first come, first served: an account that logs in a thousand times at once
queues a thousand reads, and every other user's next query waits behind them. Behind this proxy each
account has a small number of calls in flight (the rest of its calls wait their turn in its own queue), so
another account's query waits for at most a handful of calls per busy account, not for all of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nitro.storage.protocols import Storage

PER_ACCOUNT = 2  # storage calls one account may have in flight; its others wait

_R = TypeVar("_R")


class AccountShares:
    """Calls in flight per account (an account is forgotten when it has none). A call that finds its
    account below its share runs at once, with no semaphore or future made: most accounts have one call at
    a time, and on the embedded default most reads end without suspending."""

    def __init__(self, per_account: int) -> None:
        self._per_account = per_account
        self._running: dict[str, int] = {}  # accounts with calls in flight
        # accounts with calls waiting for a share, oldest first
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    async def run(self, account: str, call: Callable[[], Awaitable[_R]]) -> _R:
        """`call()` once the account has a free share (the coroutine is only made then)."""
        running = self._running.get(account, 0)
        if running < self._per_account and account not in self._waiting:
            self._running[account] = running + 1
        else:
            await self._wait(account)
        try:
            return await call()
        finally:
            self._release(account)

    async def _wait(self, account: str) -> None:
        """Until an ending call hands this one its share (the count of calls running stays the same)."""
        turn = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(account, deque()).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if not turn.cancelled():  # handed the share, then cancelled before running: pass it on
                self._release(account)
            raise  # else `_release` skips its turn (a call runs ahead of it, so one will come)

    def _release(self, account: str) -> None:
        waiting = self._waiting.get(account)
        while waiting:
            turn = waiting.popleft()
            if not turn.done():  # a cancelled waiter's turn is skipped
                if not waiting:
                    del self._waiting[account]
                turn.set_result(None)
                return
        if waiting is not None:
            del self._waiting[account]
        running = self._running[account] - 1
        if running:
            self._running[account] = running
        else:
            del self._running[account]


class FairRepository:
    """Stands in for one repository: calls whose first argument names an account take that account's
    share; anything else passes through."""

    def __init__(self, inner: object, shares: AccountShares) -> None:
        self._inner = inner
        for name, method in inspect.getmembers(inner, inspect.iscoroutinefunction):
            if not name.startswith("_"):
                setattr(self, name, _fair(method, shares))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _fair(method: Callable[..., Awaitable[Any]], shares: AccountShares) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], str):
            return await shares.run(args[0], lambda: method(*args, **kwargs))
        return await method(*args, **kwargs)

    return call


def fair_storage(storage: Storage, per_account: int = PER_ACCOUNT) -> Storage:
    """The same repositories, each account limited to `per_account` calls in flight."""
    shares = AccountShares(per_account)
    proxies: dict[str, Any] = {
        field.name: FairRepository(getattr(storage, field.name), shares)
        for field in dataclasses.fields(storage)
    }
    return dataclasses.replace(storage, **proxies)
