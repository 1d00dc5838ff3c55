"""The drain's closes of sessions that cannot move (no resumable XEP-0198): run beside the drain, not in it.

Closing such a session may wait up to `[upgrade] proof_timeout` for its client's proof of reading
(nitro/c2s/read_proof.py). Awaited batch by batch, those waits set the drain's pace (20 sessions per
round trip of a busy client, not `drain_rate`) and keep resumable sessions waiting behind them; so each
batch's closes run as one task, the successor hears `left` for them once they are closed (what reached them
meanwhile was stored offline there), and the drain awaits them all before it says it is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nitro.c2s.session import ClientSession
from nitro.ops.handover import HandoverError

log = logging.getLogger(__name__)


class Closes:
    """The close tasks of one drain. Never cancelled: a session out of the registry is closed all the way
    (on a rollback its client reconnects, to this process again)."""

    def __init__(
        self,
        close: Callable[[ClientSession], Awaitable[None]],
        gone: Callable[[list[str]], Awaitable[None]],
    ) -> None:
        self._close = close
        self._gone = gone  # tells the successor these JIDs are no longer here
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, sessions: list[ClientSession]) -> None:
        if sessions:
            task = asyncio.create_task(self._run(sessions))
            self._tasks.add(task)

    async def _run(self, sessions: list[ClientSession]) -> None:
        jids = [str(session.jid) for session in sessions]
        await asyncio.gather(*(self._close(session) for session in sessions))
        try:
            await self._gone(jids)
        except HandoverError as exc:  # the successor went away: the drain's reader sees it and rolls back
            log.warning("upgrade: could not tell the successor %d sessions closed: %s", len(jids), exc)

    def reap(self) -> None:
        """Forget finished tasks, raising what one raised (a bug: a close never raises)."""
        for task in [task for task in self._tasks if task.done()]:
            self._tasks.discard(task)
            task.result()

    async def wait(self) -> None:
        """Until every close started has finished; raises the first failure."""
        while self._tasks:
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                self._tasks.discard(task)
                task.result()
