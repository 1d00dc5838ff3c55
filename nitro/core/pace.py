"""Long loops that let the event loop breathe: `paced` yields to it every few items, so one session's
4,000-contact broadcast or roster is many short steps between other sessions' work, not one long stall.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

T = TypeVar("T")

EVERY = 100  # items between two yields: a few milliseconds of routing at most


async def paced(items: Iterable[T], every: int = EVERY) -> AsyncIterator[T]:
    """The items of `items`, with a turn of the event loop after every `every` of them."""
    for index, item in enumerate(items, 1):
        yield item
        if index % every == 0:
            await asyncio.sleep(0)
