"""The benchmark harness's servers (integration/loadgen/process.py `running`) end with the harness: one killed
(SIGKILL, a CI timeout) leaves no server behind, holding its port and its core."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from upgrade_node import alive

from integration.bench_servers import free_port

# A stand-in server: listens on the port it is given, then sleeps (SIGTERM's default action ends it).
SERVER = textwrap.dedent(
    """
    import socket, sys, time
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    time.sleep(600)
    """
)

# The harness: starts the server with `running`, says its pid, then waits inside the block to be killed.
HARNESS = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from integration.loadgen.process import running
    port, log, server = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    command = [sys.executable, "-c", server, str(port)]
    with running(command, port=port, log=log, cwd=log.parent, cpus=None) as process:
        print(process.pid, flush=True)
        time.sleep(600)
    """
)


def test_a_killed_harness_takes_its_server_with_it(tmp_path: Path) -> None:
    harness = subprocess.Popen(
        [sys.executable, "-c", HARNESS, str(free_port()), str(tmp_path / "server.log"), SERVER],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,  # the integration package
    )
    server_pid = 0
    try:
        assert harness.stdout is not None
        server_pid = int(harness.stdout.readline())
        assert alive(server_pid)
        harness.kill()
        harness.wait(10)
        deadline = time.monotonic() + 10
        while alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(server_pid), "the server outlived the harness that started it"
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait(10)
        if harness.stdout is not None:
            harness.stdout.close()
        if server_pid and alive(server_pid):  # only the server this test started, by its pid
            os.kill(server_pid, signal.SIGKILL)
