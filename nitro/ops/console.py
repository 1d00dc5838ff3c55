"""What the operator's commands say on standard error: which database they opened, and whether they
can prompt for a password at all."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sqlalchemy.engine import make_url


def database_line(dsn: str, role: str = "") -> str:
    """One line naming the database at `dsn` (password hidden), after `role` ("from", "to") if given; a
    SQLite file that does not exist yet is called new, so a command run against the wrong config does
    not pass unnoticed."""
    url = make_url(dsn)
    lead = f"nitro: {role} database" if role else "nitro: database"
    if url.get_backend_name() != "sqlite":
        return f"{lead} {url.render_as_string(hide_password=True)} (MariaDB/MySQL)"
    database = url.database or ":memory:"
    if database == ":memory:" or database.startswith("file:"):
        return f"{lead} {database} (SQLite)"
    path = Path(database).resolve()
    if path.exists():
        return f"{lead} {path} (SQLite)"
    return f"{lead} {path} (SQLite, a new empty file: it did not exist)"


def announce_database(dsn: str, role: str = "") -> None:
    """Print `database_line` to standard error (standard output stays the command's parseable result)."""
    print(database_line(dsn, role), file=sys.stderr)


def terminal_available() -> bool:
    """True when a password prompt can be shown: a controlling terminal, or standard input is one."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return sys.stdin is not None and sys.stdin.isatty()
    os.close(fd)
    return True
