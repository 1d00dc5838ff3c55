"""Giving freed C memory back to the system: glibc keeps the pages that lxml parsers and OpenSSL buffers
freed inside the process (RSS) until `malloc_trim` returns them. Idle sessions free their parsers a few
seconds after their last input (nitro/transports/tcp_task.py); one trim a second at most follows (issue 16).

And keeping large blocks out of the heap in the first place: glibc serves an allocation of at least
`M_MMAP_THRESHOLD` bytes (128 KiB by default) with its own `mmap`, whose untouched pages cost nothing and
which goes back to the system when freed; but once any such block is freed, glibc raises the threshold to
that block's size. A server with HTTPS frees one early (uvloop's TLS protocol, under aiohttp's TLS listener,
allocates a 256 KiB read buffer per connection; c2s TLS is Nitro's own, nitro/transports/tls_layer.py), and
from then on each connection's buffer lies on heap pages other allocations already touched.
`fix_mmap_threshold` sets the threshold explicitly, which turns that adjustment off.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_DELAY = 1.0  # seconds between the first release and the trim that follows (releases come in waves)


M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: mallopt refuses more


def _glibc(name: str, argtypes: list[type], restype: type) -> Callable[..., int] | None:
    """A function of glibc's allocator, or None (another C library, or none found)."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    with contextlib.suppress(OSError, AttributeError):
        function = getattr(ctypes.CDLL(library), name)
        function.argtypes = argtypes
        function.restype = restype
        return function  # type: ignore[no-any-return]
    return None


_TRIM = _glibc("malloc_trim", [ctypes.c_size_t], ctypes.c_int)
_MALLOPT = _glibc("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)


def fix_mmap_threshold(nbytes: int) -> bool:
    """Serve allocations of `nbytes` or more with mmap for the life of the process, and stop glibc from
    raising that threshold. 0 leaves glibc's dynamic threshold alone. True when it was set."""
    if nbytes <= 0:
        return False
    if _MALLOPT is None:
        log.info("malloc: no glibc, [runtime] malloc_mmap_threshold has nothing to set")
        return False
    if not _MALLOPT(M_MMAP_THRESHOLD, min(nbytes, MAX_MMAP_THRESHOLD)):
        log.warning("malloc: glibc refused an mmap threshold of %d bytes", nbytes)
        return False
    log.info("malloc: mmap threshold fixed at %d bytes", nbytes)
    return True


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
