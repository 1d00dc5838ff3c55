"""The PID file of the process that is serving: written atomically (a temporary file renamed over it), so a
reader never sees it half-written; a PID file naming a process that is gone (or is no Nitro) is stale."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def read_pid(path: Path) -> int | None:
    """The PID in the file, or None (no file, unreadable, not a positive number)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def is_nitro(pid: int) -> bool:
    """A live process whose command line names nitro (what we never signal otherwise)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False  # gone (or no /proc: we do not signal what we cannot identify)
    return b"nitro" in cmdline


def running_pid(path: Path) -> int | None:
    """The PID of the Nitro the file names, None when there is none or the file is stale."""
    pid = read_pid(path)
    return pid if pid is not None and is_nitro(pid) else None


def write_pid_file(path: Path, pid: int | None = None) -> bool:
    """Write `pid` (ours by default) atomically; a stale file is replaced and said so. False on failure."""
    pid = os.getpid() if pid is None else pid
    previous = read_pid(path)
    if previous is not None and previous != pid and previous != os.getppid():
        if running_pid(path) is None:
            log.warning("pid file %s named process %d, which is not running: stale, replaced", path, previous)
        else:
            log.warning("pid file %s named Nitro process %d; it now names %d", path, previous, pid)
    temporary = path.with_name(f".{path.name}.{pid}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(f"{pid}\n")
        os.replace(temporary, path)
    except OSError as exc:
        log.error("cannot write the pid file %s: %s", path, exc)
        with contextlib.suppress(OSError):
            temporary.unlink()
        return False
    return True


def remove_pid_file(path: Path) -> None:
    """At exit: removed only if it still names this process (not a successor)."""
    if read_pid(path) == os.getpid():
        with contextlib.suppress(OSError):
            path.unlink()
