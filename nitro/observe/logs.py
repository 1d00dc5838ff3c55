"""Logging to stdout as text or JSON lines, each line carrying the id (and JID) of the session it concerns.

A connection's task enters its session's scope (`enter_session`); every record logged from that task,
by any module, then names the session, and `SessionLog` names its own session explicitly.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import IO, Any, Protocol

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(session_prefix)s%(message)s"


class _HasExtra(Protocol):
    @property
    def extra(self) -> Mapping[str, object] | None: ...


_current: contextvars.ContextVar[_HasExtra | None] = contextvars.ContextVar("nitro_session", default=None)


def label(extra: Mapping[str, object]) -> str:
    """How a session is named in text logs: its id, then its JID once known."""
    return f"{extra.get('session')} {extra['jid']}" if extra.get("jid") else f"{extra.get('session')}"


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every record with the session id and, once known, its JID; also puts both in `extra`."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"[{label(extra)}] {msg}", kwargs


def enter_session(session_log: _HasExtra) -> None:
    """From now on the current task (and tasks it starts) logs on behalf of this session."""
    _current.set(session_log)


class SessionFilter(logging.Filter):
    """Gives every record `session`, `jid` and `session_prefix` (the text prefix, unless already there)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "session"):  # from a SessionLog: the message is already prefixed
            record.jid = getattr(record, "jid", None)
            record.session_prefix = ""
            return True
        scope = _current.get()
        extra = (scope.extra if scope is not None else None) or {}
        session = extra.get("session")
        record.session = session
        record.jid = extra.get("jid")
        record.session_prefix = f"[{label(extra)}] " if session else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, session and jid when known, exception."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        session = getattr(record, "session", None)
        jid = getattr(record, "jid", None)
        if session is not None:
            prefix = f"[{label({'session': session, 'jid': jid})}] "
            message = message.removeprefix(prefix)
        document: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        if session is not None:
            document["session"] = str(session)
        if jid:
            document["jid"] = str(jid)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


def make_handler(format: str, stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing `format` ("text" or "json") lines to `stream` (standard output by default)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.addFilter(SessionFilter())
    handler.setFormatter(JsonFormatter() if format == "json" else logging.Formatter(TEXT_FORMAT))
    return handler


# Libraries whose INFO lines are for their own developers (alembic's "Context impl SQLiteImpl.", aiohttp's
# access log of every scrape, SQLAlchemy's pool): WARNING and above unless the configured level is DEBUG.
LIBRARY_LOGGERS = (
    "aiosqlite",
    "asyncmy",
    "sqlalchemy",
    "alembic",
    "redis",
    "aiohttp",
    "aiohttp.access",
    "uvloop",
)


def configure(level: str, format: str, stream: IO[str] | None = None) -> None:
    """Replace the root logger's handlers with one that writes to `stream` (standard output); third-party
    loggers at WARNING unless `level` is DEBUG."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(format, stream))
    root.setLevel(level.upper())
    library_level = logging.NOTSET if level.upper() == "DEBUG" else logging.WARNING
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)
