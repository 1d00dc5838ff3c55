"""The admin channel's wire form, shared by the server and the CLI: one JSON object per line each way.

A request is `{"command": NAME, ...arguments}`; the answer `{"ok": true, "result": {...}}` or
`{"ok": false, "error": TEXT, "code": CODE}`. The socket is a Unix socket of mode 0600, so only its owner
(and root) can speak on it; the server also checks the peer's uid.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
from pathlib import Path
from typing import Any, Literal

from nitro.config import Config

MAX_REQUEST = 64 * 1024  # bytes of one request line (credentials, a JID, a reason)
MAX_ANSWER = 64 * 1024 * 1024  # bytes of one answer line (`sessions` of a busy node)
CONNECT_TIMEOUT = 5.0
ANSWER_TIMEOUT = 60.0  # `user del` of a big account or a reload may take a while

ErrorCode = Literal["bad-request", "not-found", "conflict", "unavailable", "internal"]


class ChannelError(Exception):
    """The server answered with an error (or not at all); `code` says which kind."""

    def __init__(self, text: str, code: ErrorCode = "internal") -> None:
        super().__init__(text)
        self.code: ErrorCode = code


class NotRunning(ChannelError):
    """No server listens on the admin socket (none configured, no socket file, or nobody behind it)."""

    def __init__(self, text: str) -> None:
        super().__init__(text, "unavailable")


def config_path(config: Config, value: str) -> Path | None:
    """A path from `[admin]`: None when empty; relative ones are relative to the config file's directory
    (or, for a configuration that came from no file, to `base_dir`)."""
    if not value:
        return None
    path = Path(value)
    if path.is_absolute():
        return path
    return (config.file.parent if config.file is not None else config.base_dir) / path


def socket_path(config: Config) -> Path | None:
    return config_path(config, config.admin.socket)


def pid_path(config: Config) -> Path | None:
    return config_path(config, config.admin.pid_file)


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One message; ValueError when it is not a JSON object."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("a message is a JSON object")
    return message


async def call(
    config: Config, command: str, *, answer_timeout: float = ANSWER_TIMEOUT, **arguments: Any
) -> dict[str, Any]:
    """Send one request to the running server; its result, or ChannelError / NotRunning."""
    path = socket_path(config)
    if path is None:
        raise NotRunning('the admin channel is off ([admin] socket = "")')
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(path), limit=MAX_ANSWER), CONNECT_TIMEOUT
        )
    except FileNotFoundError as exc:
        raise NotRunning(f"no server is running (no admin socket at {path})") from exc
    except ConnectionRefusedError as exc:
        raise NotRunning(f"no server is running (nobody listens on {path})") from exc
    except PermissionError as exc:
        raise ChannelError(f"cannot open {path}: run as the user the server runs as", "unavailable") from exc
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
            raise NotRunning(f"no server is running at {path} ({exc.strerror})") from exc
        raise ChannelError(f"cannot connect to {path}: {exc}", "unavailable") from exc
    try:
        writer.write(encode({"command": command, **arguments}))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), answer_timeout)
    except (TimeoutError, OSError, ValueError) as exc:
        raise ChannelError(f"no answer from the server on {path}: {exc or type(exc).__name__}") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if not line:
        raise ChannelError(f"the server closed {path} without answering")
    answer = decode(line)
    if not answer.get("ok"):
        code = answer.get("code")
        raise ChannelError(
            str(answer.get("error", "unknown error")),
            code if code in ("bad-request", "not-found", "conflict", "unavailable") else "internal",
        )
    result = answer.get("result", {})
    return result if isinstance(result, dict) else {"value": result}
