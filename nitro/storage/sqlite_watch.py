"""Whether a SQLite database changed since we last looked: `PRAGMA data_version` on a connection of ours.

SQLite changes a connection's data_version whenever *another* connection committed (another process,
or another connection of this process's pool), so one integer per read tells a single-process server
whether anything it cached may be stale. The check runs on the event loop: in WAL mode it reads the
shared-memory index header (no disk I/O and no lock wait; a busy database counts as changed).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from sqlalchemy.engine import make_url

from nitro.storage.sql import sqlite_path

log = logging.getLogger(__name__)


def watchable_path(dsn: str) -> Path | None:
    """The database file of a SQLite DSN whose commits can be watched; None for other backends and for
    in-memory or `file:` URI databases (each connection of those may see a database of its own)."""
    url = make_url(dsn)
    if url.get_backend_name() != "sqlite":
        return None
    return sqlite_path(url)


class DataVersion:
    """`changed()` is True when any other connection committed since the previous call (or on error)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._last: int | None = None

    def open(self) -> None:
        # timeout=0: never wait on the event loop; a busy database is reported as changed instead.
        self._conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def changed(self) -> bool:
        if self._conn is None:
            return True
        try:
            (version,) = self._conn.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error as exc:
            log.debug("PRAGMA data_version on %s: %s", self.path, exc)
            self._last = None
            return True
        changed: bool = version != self._last
        self._last = version
        return changed
