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
from collections.abc import Awaitable, Callable
from typing import Any

from nitro.storage.protocols import Storage

PER_ACCOUNT = 2  # storage calls one account may have in flight; its others wait


class AccountShares:
    """One semaphore per account with calls in flight (forgotten when it has none)."""

    def __init__(self, per_account: int) -> None:
        self._per_account = per_account
        self._shares: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    async def run(self, account: str, call: Awaitable[Any]) -> Any:
        entry = self._shares.get(account)
        if entry is None:
            entry = self._shares[account] = (asyncio.Semaphore(self._per_account), [0])
        semaphore, users = entry
        users[0] += 1
        try:
            async with semaphore:
                return await call
        finally:
            users[0] -= 1
            if users[0] == 0 and self._shares.get(account) is entry:
                del self._shares[account]


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
            return await shares.run(args[0], method(*args, **kwargs))
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
