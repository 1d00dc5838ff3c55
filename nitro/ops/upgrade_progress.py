"""What an upgrade is at: the process's generation, the state and progress `nitro status` shows, and the
outcomes `nitro upgrade` reports (nitro/ops/upgrade.py runs it)."""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field
from typing import Any

HANDOVER_FD = "NITRO_HANDOVER_FD"  # the successor's end of the upgrade socket
GENERATION = "NITRO_GENERATION"  # 1 for a process started by hand, +1 for each successor


class Outcome(enum.Enum):
    DONE = "done"
    UNDER_WAY = "under-way"  # refused: an upgrade is already running
    ROLLED_BACK = "rolled-back"  # the successor failed before ready; this process serves on
    WORKERS = (
        "refused-workers"  # refused: [server] workers > 1 without an admin socket (nitro/ops/rolling.py)
    )


@dataclass
class Progress:
    """What `nitro status` shows of an upgrade."""

    state: str = "idle"  # idle, spawning, checking, draining, done, rolled-back
    successor: int | None = None
    started: float | None = None
    to_move: int = 0
    moved: int = 0
    closed: int = 0
    reason: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "successor": self.successor,
            "to_move": self.to_move,
            "moved": self.moved,
            "closed": self.closed,
            "reason": self.reason,
            "elapsed": None if self.started is None else round(time.monotonic() - self.started, 1),
        }


def generation() -> int:
    value = os.environ.get(GENERATION, "1")
    return int(value) if value.isdigit() and int(value) > 0 else 1
