"""Process limits for the server: the soft file-descriptor limit raised to the hard one at start."""

from __future__ import annotations

import logging
import resource
from pathlib import Path

log = logging.getLogger(__name__)

_NR_OPEN = Path("/proc/sys/fs/nr_open")  # Linux: the largest value an unlimited hard limit allows


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (every connection is a descriptor; distributions
    start processes at 1024) and log it; the soft limit in force afterwards is returned."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(_NR_OPEN.read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft >= target:
        log.info("file descriptors: soft limit %d is already the hard limit", soft)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("file descriptors: cannot raise the soft limit %d to %d: %s", soft, target, exc)
        return soft
    log.info("file descriptors: soft limit raised from %d to %d (the hard limit)", soft, target)
    return target
