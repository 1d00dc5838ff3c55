"""A module's tasks are owned: unloading the module (or stopping the server) cancels exactly them."""

from __future__ import annotations

import asyncio

import pytest

from nitro.core.module import Module
from nitro.server import Server


async def test_unloading_a_module_cancels_its_tasks_and_only_them(server: Server) -> None:
    first, second = Module(server, "first"), Module(server, "second")
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    mine = first.spawn(forever())
    theirs = second.spawn(forever())
    await started.wait()
    first.unload()
    await asyncio.wait([mine], timeout=5)
    assert mine.cancelled()
    assert not theirs.done()
    await second.stop()
    assert theirs.cancelled()


async def test_a_failing_task_is_logged_and_forgotten(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    module = Module(server, "failing")

    async def fail() -> None:
        raise RuntimeError("boom")

    task = module.spawn(fail())
    await asyncio.wait([task], timeout=5)
    await asyncio.sleep(0)
    assert not module._tasks  # done tasks are not kept
    assert "a task of module failing failed" in caplog.text
