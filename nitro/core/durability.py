"""Durability promises of one inbound stanza: what its handlers stored asynchronously, so that the session
acknowledges the stanza (XEP-0198 `<a h/>`) only once that is durable (acknowledged ⇒ on disk).

The session opens a collection around the routing of each stanza; a handler that hands a write to a
background writer (the archive) adds the write's future. Outside a collection (a stanza the server itself
routes) a promise is nobody's business and is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

Promise = asyncio.Future[None]

_collected: ContextVar[list[Promise] | None] = ContextVar("nitro_durability", default=None)


@contextlib.contextmanager
def collecting() -> Iterator[list[Promise]]:
    """Collect the promises made while the body runs (in this task and the tasks it starts)."""
    promises: list[Promise] = []
    token = _collected.set(promises)
    try:
        yield promises
    finally:
        _collected.reset(token)


def promise(future: Promise) -> None:
    """The stanza being handled is durable only once `future` has a result."""
    promises = _collected.get()
    if promises is not None:
        promises.append(future)
