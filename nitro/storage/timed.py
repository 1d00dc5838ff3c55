"""A timing proxy over the repositories of a Storage: every coroutine method reports how long it took."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nitro.storage.protocols import Storage

# Called with (repository field name, method name, seconds) after every call, failed ones included.
Record = Callable[[str, str, float], None]


class TimedRepository:
    """Stands in for one repository: its public coroutine methods are timed, anything else passes through."""

    def __init__(self, inner: object, repository: str, record: Record) -> None:
        self._inner = inner
        for name, method in inspect.getmembers(inner, inspect.iscoroutinefunction):
            if not name.startswith("_"):
                setattr(self, name, _timed(method, repository, name, record))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)  # only reached for what __init__ did not wrap


def _timed(
    method: Callable[..., Awaitable[Any]], repository: str, operation: str, record: Record
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            record(repository, operation, time.perf_counter() - start)

    return call


def timed_storage(storage: Storage, record: Record) -> Storage:
    """The same repositories behind timing proxies; every field of Storage, so new stores are covered."""
    proxies: dict[str, Any] = {
        field.name: TimedRepository(getattr(storage, field.name), field.name, record)
        for field in dataclasses.fields(storage)
    }
    return dataclasses.replace(storage, **proxies)
