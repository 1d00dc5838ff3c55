"""Process-wide tuning of the server: the event loop it runs on, and its garbage collector."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from nitro.config import GCSection

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def run(coroutine: Coroutine[Any, Any, _T], *, use_uvloop: bool = True) -> _T:
    """Run `coroutine` to completion on uvloop when wanted and installed, else on asyncio's own loop."""
    if use_uvloop:
        try:
            import uvloop  # optional speed-up, absent on some platforms
        except ImportError:
            pass
        else:
            return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def loop_name() -> str:
    """'uvloop' or 'asyncio': what the running event loop is."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


@contextlib.contextmanager
def tuned_gc(section: GCSection) -> Iterator[None]:
    """For the life of the block: the configured collection thresholds and, if asked, everything alive
    now frozen out of collections (collected once first, so no garbage is frozen). Undone on exit.
    """
    previous = gc.get_threshold()
    gc.set_threshold(section.threshold0, section.threshold1, section.threshold2)
    if section.freeze_after_start:
        gc.collect()
        gc.freeze()
        log.info("gc: %d objects frozen after start-up", gc.get_freeze_count())
    try:
        yield
    finally:
        if section.freeze_after_start:
            gc.unfreeze()
        gc.set_threshold(*previous)
