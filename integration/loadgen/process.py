"""Servers under test as child processes: started pinned to their core, awaited on their port, stopped, and
stopped too if the harness dies first."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


_PR_SET_PDEATHSIG = 1  # prctl(2)
_LIBC = ctypes.CDLL(None, use_errno=True)


def _child_setup(cpus: frozenset[int] | None) -> Callable[[], None]:
    """What the child runs before exec: SIGTERM when the harness's thread that started it ends (a harness
    killed, or cut off by a timeout, leaves no server behind holding its port and core), and pinned to `cpus`
    (the server and every thread it starts)."""
    parent = os.getpid()

    def setup() -> None:
        if _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != parent:  # the harness died before the line above
            os.kill(os.getpid(), signal.SIGTERM)
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = START_TIMEOUT
) -> None:
    """Until the server accepts TCP on 127.0.0.1:port; raise with its log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} during start-up:\n{tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return
        time.sleep(0.1)
    raise RuntimeError(f"server not listening on port {port} after {timeout:g} s:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait, then SIGKILL: only the server we started, by its pid."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


@contextlib.contextmanager
def running(
    command: Sequence[str],
    *,
    port: int,
    log: Path,
    cwd: Path,
    cpus: frozenset[int] | None,
    env: dict[str, str] | None = None,
    user: str | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` (output to `log`) until it listens on `port`; stop it when the block ends, or when the
    thread that entered the block ends without leaving it (the harness killed): enter it from a thread that
    lives as long as the block."""
    with open(log, "ab") as output:
        process = subprocess.Popen(
            list(command),
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            preexec_fn=_child_setup(cpus),  # the parent has no threads of its own at this point
            user=user,
            group=user,
        )
    try:
        wait_for_port(port, process, log)
        yield process
    finally:
        stop(process)
