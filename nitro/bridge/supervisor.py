"""Runs the configured plugins: `process` ones as child processes (output logged under `plugin.NAME`,
restarted with exponential backoff, SIGTERM then SIGKILL at stop), `inprocess` ones as tasks on this
loop; `external` ones are only waited for (the listener authorises them)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import nitro
from nitro.config_plugins import PluginSection
from nitro.config_sections import Config
from nitro.sdk.settings import settings_from_config

log = logging.getLogger(__name__)

MIN_BACKOFF: Final = 0.5
MAX_BACKOFF: Final = 30.0
STABLE_AFTER: Final = 10.0  # a plugin up this long restarts from the shortest delay next time
SOURCE_ROOT: Final = Path(nitro.__file__).resolve().parent.parent  # where `plugins/` sits beside `nitro/`


class Supervisor:
    """Owns one task per `inprocess`/`process` plugin; `stop` ends them all (children by their pid)."""

    def __init__(self, config: Config, port: Callable[[], int]) -> None:
        self.config = config
        self._port = port  # the listener's bound port (the configured one, or the one 0 picked)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.processes: dict[str, asyncio.subprocess.Process] = {}  # running children, by plugin name
        self.starts: dict[str, int] = {}  # how many times each plugin was started

    def start(self) -> None:
        for entry in self.config.plugins.entries:
            if entry.mode == "process":
                self._tasks[entry.name] = asyncio.create_task(self._keep_running(entry, self._run_process))
            elif entry.mode == "inprocess":
                self._tasks[entry.name] = asyncio.create_task(self._keep_running(entry, self._run_inprocess))
            else:
                log.info("plugin %s is external: waiting for it to connect", entry.name)

    async def _keep_running(
        self, entry: PluginSection, run: Callable[[PluginSection], Awaitable[None]]
    ) -> None:
        delay = MIN_BACKOFF
        while True:
            started = time.monotonic()
            self.starts[entry.name] = self.starts.get(entry.name, 0) + 1
            try:
                await run(entry)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("plugin %s failed", entry.name)
            if time.monotonic() - started >= STABLE_AFTER:
                delay = MIN_BACKOFF
            log.warning("plugin %s stopped; starting it again in %.1fs", entry.name, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _run_inprocess(self, entry: PluginSection) -> None:
        module: Any = importlib.import_module(entry.module_name)
        settings = settings_from_config(self.config, entry.name)
        settings = dataclasses.replace(settings, core_host="127.0.0.1", core_port=self._port())
        log.info("plugin %s: running %s.main in this process", entry.name, entry.module_name)
        await module.main(settings)

    async def _run_process(self, entry: PluginSection) -> None:
        if self.config.file is None:
            raise RuntimeError("a `process` plugin needs the server to run from a config file (--config)")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", entry.module_name, "--config", str(self.config.file.absolute())]
        command += ["--name", entry.name, "--core", f"127.0.0.1:{self._port()}"]
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            limit=1 << 20,  # a line of output up to 1 MiB (a long traceback) is logged, not an error
        )
        self.processes[entry.name] = process
        log.info("plugin %s: started pid %s", entry.name, process.pid)
        try:
            assert process.stdout is not None
            output = logging.getLogger(f"plugin.{entry.name}")
            async for line in process.stdout:
                output.info("%s", line.decode(errors="replace").rstrip())
            code = await process.wait()
            log.warning("plugin %s: pid %s exited with %s", entry.name, process.pid, code)
        finally:
            await self._end(entry.name, process)

    async def _end(self, name: str, process: asyncio.subprocess.Process) -> None:
        """SIGTERM, then SIGKILL after `stop_timeout`: only this child, by its pid."""
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(process.wait()), self.config.plugins.stop_timeout)
            except TimeoutError:
                log.warning("plugin %s: pid %s ignored SIGTERM; SIGKILL", name, process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self.processes.get(name) is process:
            del self.processes[name]

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for name, process in list(self.processes.items()):  # a child whose task was cancelled mid-wait
            await self._end(name, process)
