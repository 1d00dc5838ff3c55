"""Giving freed C memory back to the system: glibc keeps the pages that lxml parsers and OpenSSL buffers
freed inside the process (RSS) until `malloc_trim` returns them. Idle sessions free their parsers a few
seconds after their last input (nitro/transports/tcp_task.py); one trim a second at most follows (issue 16).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
from collections.abc import Callable

TRIM_DELAY = 1.0  # seconds between the first release and the trim that follows (releases come in waves)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None (another C library, or none found)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    with contextlib.suppress(OSError, AttributeError):
        function = ctypes.CDLL(name).malloc_trim
        function.argtypes = [ctypes.c_size_t]
        function.restype = ctypes.c_int
        return function
    return None


_TRIM = _malloc_trim()
_scheduled: set[asyncio.AbstractEventLoop] = set()


def trim_soon() -> None:
    """Some C memory was freed (an idle parser): return free pages to the system within TRIM_DELAY, in a
    thread (ctypes releases the GIL), so the event loop does not wait for the heap walk."""
    if _TRIM is None:
        return
    loop = asyncio.get_running_loop()
    if loop in _scheduled:
        return
    for closed in [other for other in _scheduled if other.is_closed()]:  # closed before their trim came
        _scheduled.discard(closed)
    _scheduled.add(loop)
    loop.call_later(TRIM_DELAY, _start, loop)


def _start(loop: asyncio.AbstractEventLoop) -> None:
    _scheduled.discard(loop)
    if not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # the loop is shutting down its default executor
            loop.run_in_executor(None, trim_now)


def trim_now() -> bool:
    """Return free heap pages to the system now; False if nothing could be (or no glibc)."""
    return _TRIM is not None and bool(_TRIM(0))
