"""glibc's mmap threshold, fixed at start-up: large blocks stay mmapped after one is freed."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import write_config
from test_runtime import startup_lines

from nitro.config import ConfigError, parse_config
from nitro.observe.heap import fix_mmap_threshold

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")

# Frees one 300 KiB block (glibc's dynamic threshold rises past it), then asks for 256 KiB (uvloop's TLS
# read buffer): prints how many mmapped blocks that allocation added (mallinfo2's hblks).
_PROBE = """
import ctypes, sys
from nitro.observe.heap import fix_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold(128 * 1024)
libc.free(libc.malloc(300 * 1024))
before = libc.mallinfo2().hblks
block = libc.malloc(256 * 1024)
print(libc.mallinfo2().hblks - before)
libc.free(block)
"""


def _mmapped_blocks_added(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_a_fixed_threshold_keeps_large_blocks_mmapped_after_one_is_freed() -> None:
    assert _mmapped_blocks_added("dynamic") == 0  # glibc's own habit: the 256 KiB block came from the heap
    assert _mmapped_blocks_added("fixed") == 1


def test_zero_leaves_glibc_alone_and_the_range_is_checked() -> None:
    assert fix_mmap_threshold(0) is False
    assert parse_config({"runtime": {"malloc_mmap_threshold": 0}}).runtime.malloc_mmap_threshold == 0
    with pytest.raises(ConfigError, match="malloc_mmap_threshold"):
        parse_config({"runtime": {"malloc_mmap_threshold": 64 * 1024 * 1024}})
    with pytest.raises(ConfigError, match="malloc_mmap_threshold"):
        parse_config({"runtime": {"malloc_mmap_threshold": -1}})


async def test_serve_fixes_the_threshold_unless_told_not_to(tmp_path: Path) -> None:
    config, _port = write_config(tmp_path)
    assert any(b"mmap threshold fixed at 131072 bytes" in line for line in await startup_lines(config))
    with config.open("a") as file:
        file.write("[runtime]\nmalloc_mmap_threshold = 0\n")
    assert not any(b"mmap threshold fixed" in line for line in await startup_lines(config))
