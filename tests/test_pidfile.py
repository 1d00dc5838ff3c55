"""The PID file (written atomically by the serving process, stale ones named) and systemd's notify socket."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nitro.ops import sdnotify
from nitro.ops.pidfile import read_pid, remove_pid_file, running_pid, write_pid_file


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_written_atomically_and_removed_only_by_its_process(tmp_path: Path) -> None:
    path = tmp_path / "run" / "nitro.pid"
    assert write_pid_file(path)
    assert read_pid(path) == os.getpid()
    assert [p.name for p in path.parent.iterdir()] == ["nitro.pid"]  # no temporary file left
    path.write_text("12345\n")  # a successor's
    remove_pid_file(path)
    assert path.exists()
    path.write_text(f"{os.getpid()}\n")
    remove_pid_file(path)
    assert not path.exists()


@pytest.mark.parametrize("content", ["", "nope\n", "-5\n", "0\n"])
def test_garbage_in_the_file_is_no_pid(tmp_path: Path, content: str) -> None:
    path = tmp_path / "nitro.pid"
    path.write_text(content)
    assert read_pid(path) is None
    assert running_pid(path) is None


def test_a_stale_file_is_named_and_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "nitro.pid"
    gone = dead_pid()
    path.write_text(f"{gone}\n")
    assert running_pid(path) is None  # not running: stale
    with caplog.at_level(logging.WARNING, logger="nitro.ops.pidfile"):
        assert write_pid_file(path)
    assert read_pid(path) == os.getpid()
    assert f"named process {gone}, which is not running: stale, replaced" in caplog.text


def test_an_unwritable_directory_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.ERROR, logger="nitro.ops.pidfile"):
        assert not write_pid_file(blocker / "nitro.pid")
    assert "cannot write the pid file" in caplog.text


def test_notify_sends_one_datagram_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.notify("READY=1")  # not started by systemd
    address = "\0nitro-test-" + os.urandom(6).hex()  # an abstract socket, as systemd's often is
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + address[1:])
        assert sdnotify.notify("READY=1", "MAINPID=42")
        assert listener.recv(4096) == b"READY=1\nMAINPID=42"
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody.sock"))
    assert not sdnotify.notify("READY=1")  # nobody listens: logged, not raised
