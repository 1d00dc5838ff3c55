"""Helpers for the plugin tests: a config with plugins, slixmpp components and raw XEP-0114 streams."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import slixmpp
from conftest import free_port, free_ports, make_config, read_until, resolve
from slixmpp.componentxmpp import ComponentXMPP

from nitro.config import Config, load_config
from nitro.server import Server

SECRET = "plugin secret"
ECHO = "echo.localhost"


def plugins_config(
    tmp_path: Path, plugins: dict[str, dict[str, Any]] | None = None, **listener: Any
) -> Config:
    """make_config with a plugin listener on a free port and, by default, one external plugin at ECHO."""
    table: dict[str, Any] = {"port": free_port(), "handshake_timeout": 5.0, **listener}
    for name, entry in (
        plugins or {"echo": {"mode": "external", "subdomain": ECHO, "secret": SECRET}}
    ).items():
        table[name] = entry
    return make_config(tmp_path, http={"enabled": False}, plugins=table)


async def connect_component(
    server: Server,
    domain: str = ECHO,
    secret: str = SECRET,
    plugins: tuple[str, ...] = ("xep_0030",),
    setup: Callable[[ComponentXMPP], None] | None = None,
) -> ComponentXMPP:
    """A slixmpp component logged in to the server's plugin listener (session_start seen); `setup` adds
    handlers before it connects (held stanzas arrive right after the handshake)."""
    assert server.bridge is not None
    component = ComponentXMPP(domain, secret, "127.0.0.1", server.bridge.port)
    for plugin in plugins:
        component.register_plugin(plugin)
    if setup is not None:
        setup(component)
    started = asyncio.get_running_loop().create_future()
    component.add_event_handler("session_start", lambda _event: resolve(started, True))
    component.connect()
    await asyncio.wait_for(started, 10)
    return component


async def disconnect(client: slixmpp.BaseXMPP) -> None:
    with contextlib.suppress(Exception):  # already gone
        await asyncio.wait_for(client.disconnect(wait=0.5), 3)
    client.abort()


async def raw_component(
    port: int, domain: str, host: str = "127.0.0.1", local_addr: tuple[str, int] | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Open a XEP-0114 stream to `domain` and return the reader, writer and what the server answered."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=local_addr)
    writer.write(
        f"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'"
        f" to='{domain}'>".encode()
    )
    head = await read_until(reader, b">")
    return reader, writer, head


def stream_id(head: bytes) -> str:
    found = re.search(rb"id=['\"]([^'\"]+)['\"]", head)
    assert found is not None, head
    return found[1].decode()


def digest(head: bytes, secret: str = SECRET) -> str:
    return hashlib.sha1((stream_id(head) + secret).encode()).hexdigest()  # noqa: S324 (XEP-0114 §3)


async def raw_authenticated(
    port: int, domain: str = ECHO, secret: str = SECRET
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A raw stream that sent the handshake; returns what the server answered to it."""
    reader, writer, head = await raw_component(port, domain)
    writer.write(f"<handshake>{digest(head, secret)}</handshake>".encode())
    answer = await read_until(reader, b"handshake")
    return reader, writer, answer


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items()) + " }"
    raise TypeError(value)


def config_file(tmp_path: Path, plugins: dict[str, dict[str, Any]], **listener: Any) -> Config:
    """A config written to tmp_path/nitro.toml and loaded from there (a `process` plugin reads the file)."""
    c2s, tls = free_ports(2)
    sections: dict[str, dict[str, Any]] = {
        "server": {"domain": "localhost"},
        "storage": {"dsn": f"sqlite+aiosqlite:///{tmp_path}/nitro.db"},
        "c2s": {"port": c2s, "direct_tls_port": tls},
        "http": {"enabled": False},
        "tls": {"cert": str(tmp_path / "tls" / "cert.pem"), "key": str(tmp_path / "tls" / "key.pem")},
        "metrics": {"port": 0},
        "admin": {"socket": "", "pid_file": ""},
        "plugins": {"port": free_port(), **listener},
    }
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    for name, entry in plugins.items():
        lines.append(f"[plugins.{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in entry.items()]
    path = tmp_path / "nitro.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path)


async def raw_hooks(
    port: int, hooks: list[tuple[str, str]], domain: str = ECHO
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw component that registered `hooks` ((event, kind) pairs) and got the result."""
    reader, writer, answer = await raw_authenticated(port, domain)
    assert b"error" not in answer
    items = "".join(f"<hook event='{event}' kind='{kind}'/>" for event, kind in hooks)
    writer.write(
        f"<iq type='set' id='reg' from='{domain}' to='localhost'>"
        f"<register xmlns='urn:nitro:plugin:hooks:0'>{items}</register></iq>".encode()
    )
    registered = await read_until(reader, b"reg")
    assert b'type="result"' in registered or b"type='result'" in registered, registered
    return reader, writer


def filter_ids(data: bytes) -> list[str]:
    """The ids of the filter requests in what a raw component read."""
    return re.findall(r"<iq [^>]*id=\"(hook-\d+)\"", data.decode())
