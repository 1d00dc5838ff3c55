"""The admin channel of a running server: a Unix socket (mode 0600) answering `status`, `sessions`,
`kick`, `reload` and the account changes of `nitro user add|passwd|del` (wire form in `channel`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import socket
import struct
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nitro import __version__
from nitro.accounts import InvalidUsername, delete_account, prepare_username
from nitro.core.module import AccountEvent, SessionEvent
from nitro.ops.channel import MAX_REQUEST, ChannelError, decode, encode, pid_path, socket_path
from nitro.ops.credentials import credentials_from_wire
from nitro.ops.pidfile import remove_pid_file, write_pid_file
from nitro.storage.errors import AlreadyExists, StorageError
from nitro.transports.listeners import Listeners, Stop
from nitro.xmpp.errors import StreamCondition, StreamError
from nitro.xmpp.jid import JID, InvalidJID

if TYPE_CHECKING:
    from nitro.core.context import Session
    from nitro.ops.reload import Running

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 60.0  # seconds a client of the channel may stay silent between requests
MAX_NODES = 1000  # nodes listed by `status` at most
# What a kicked session is told: ejabberd's `kick_user` (ejabberd_sm `kick`) sends <policy-violation/>
# "has been kicked"; Prosody's `c2s:close()` sends no error at all unless given one.
KICK_CONDITION: StreamCondition = "policy-violation"


def describe(session: Session, bound_at: float | None) -> dict[str, Any]:
    """What `sessions` shows of one bound session: the only place that reads session objects."""
    transport = session.transport
    # "detached": XEP-0198 §5, the connection is lost and the session waits to be resumed
    state = "detached" if session.detached else "available" if session.available else "bound"
    return {
        "jid": str(session.jid),
        "id": session.id,
        "state": state,
        "peer": transport.peer_host,
        "transport": transport.kind,
        "tls": bool(transport.encrypted),
        "since": _iso(bound_at) if bound_at is not None else None,
    }


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")


class _Members(Protocol):
    async def members(self) -> list[dict[str, Any]]: ...


class AdminChannel:
    """The commands; each takes the request's arguments and returns the result or raises ChannelError."""

    def __init__(self, server: Running) -> None:
        self.server = server
        self.started = time.time()
        self.bound_at: weakref.WeakKeyDictionary[Session, float] = weakref.WeakKeyDictionary()
        self.commands: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "status": self.status,
            "sessions": self.sessions,
            "kick": self.kick,
            "reload": self.reload,
            "user-add": self.user_add,
            "user-passwd": self.user_passwd,
            "user-del": self.user_del,
        }
        # more of `status` from other parts (e.g. the upgrade: generation and drain progress)
        self.status_parts: dict[str, Callable[[], Any]] = {}

    async def on_bind(self, event: SessionEvent) -> None:
        self.bound_at.setdefault(event.session, time.time())  # a resumed session keeps its first bind

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        command = self.commands.get(str(request.get("command")))
        if command is None:
            raise ChannelError(f"unknown command {request.get('command')!r}", "bad-request")
        return await command(request)

    # -- looking ------------------------------------------------------------------------------------------

    async def status(self, _request: dict[str, Any]) -> dict[str, Any]:
        server = self.server
        return {
            "version": __version__,
            "domain": server.domain,
            "pid": os.getpid(),
            "node": server.tiers.node_id if server.tiers is not None else None,
            "started": _iso(self.started),
            "uptime": round(time.time() - self.started, 1),
            "reloads": server.reloads,
            "connections": server.metrics.session_counts(),
            "bound": len(server.sessions),
            "nodes": await self._nodes(),
            "cluster": await self._members(),
            **{name: part() for name, part in self.status_parts.items()},
        }

    async def _members(self) -> list[dict[str, Any]]:
        """[cluster]: the live nodes with their session counts (nitro/cluster/identity.py), else []."""
        cluster: _Members | None = getattr(self.server, "cluster", None)  # nitro.server.Server.cluster
        if cluster is None:
            return []
        try:
            return await cluster.members()
        except StorageError as exc:
            log.warning("cluster members unreadable: %s", exc)
            return []

    async def _nodes(self) -> list[str]:
        """The nodes whose heartbeat is in the ring (this one alone without a ring)."""
        directory = self.server.directory
        if directory is None:
            return []
        ring = directory.ring
        if ring is None:
            return [directory.node_id]
        prefix = ring.keys.node("")
        found: set[str] = {directory.node_id}

        async def scan(client: Any) -> list[bytes]:
            keys: list[bytes] = []
            async for key in client.scan_iter(match=f"{prefix}*", count=500):
                keys.append(key)
                if len(keys) >= MAX_NODES:
                    break
            return keys

        for instance in ring.live:
            with contextlib.suppress(StorageError):
                for key in await instance.call(scan):
                    found.add(key.decode(errors="replace").removeprefix(prefix))
        return sorted(found)

    async def sessions(self, _request: dict[str, Any]) -> dict[str, Any]:
        rows = [describe(session, self.bound_at.get(session)) for session in self.server.sessions]
        rows.sort(key=lambda row: (row["jid"], row["id"]))
        return {"sessions": rows}

    # -- acting -------------------------------------------------------------------------------------------

    async def kick(self, request: dict[str, Any]) -> dict[str, Any]:
        """Close the sessions of a bare JID (all resources) or of one full JID, on this node."""
        try:
            jid = JID.parse(str(request.get("jid", "")))
        except InvalidJID as exc:
            raise ChannelError(f"not a JID: {exc}", "bad-request") from exc
        if jid.local is None or jid.domain != self.server.domain:
            raise ChannelError(f"{jid} is not an account of {self.server.domain}", "bad-request")
        reason = str(request.get("reason") or "kicked by an administrator")
        if jid.resource is None:
            targets = self.server.sessions.sessions_of(jid)
        else:
            found = self.server.sessions.get(jid)
            targets = [] if found is None else [found]
        for session in targets:
            await session.close(StreamError(KICK_CONDITION, reason))
        if targets:
            log.info("admin channel: kicked %s (%d sessions)", jid, len(targets))
        return {"kicked": [str(session.jid) for session in targets]}

    async def reload(self, _request: dict[str, Any]) -> dict[str, Any]:
        report = self.server.reload()
        if report.error is not None:
            raise ChannelError(report.error, "bad-request")
        return {
            "applied": list(report.applied),
            "restart_needed": list(report.restart_needed),
            "failed": list(report.failed),
            "certificate": report.certificate,
        }

    def _username(self, request: dict[str, Any]) -> str:
        try:
            return prepare_username(str(request.get("username", "")), self.server.domain)
        except InvalidUsername as exc:
            raise ChannelError(f"invalid username: {exc}", "bad-request") from exc

    async def user_add(self, request: dict[str, Any]) -> dict[str, Any]:
        username = self._username(request)
        credentials = _credentials(request)
        try:
            await self.server.storage.accounts.create(username, credentials)
        except AlreadyExists as exc:
            raise ChannelError(f"account {username!r} already exists", "conflict") from exc
        await self.server.bus.fire("account-created", AccountEvent(username))
        log.info("admin channel: created %s", username)
        return {"jid": str(JID.make(username, self.server.domain))}

    async def user_passwd(self, request: dict[str, Any]) -> dict[str, Any]:
        """New credentials; the account's sessions are closed with <reset/> (as Prosody does on a password
        change, RFC 6120 §4.9.3.16), so every client logs in again with the new password."""
        username = self._username(request)
        if not await self.server.storage.accounts.set_credentials(username, _credentials(request)):
            raise ChannelError(f"no account {username!r}", "not-found")
        sessions = self.server.sessions.sessions_of(JID.make(username, self.server.domain))
        for session in sessions:
            await session.close(StreamError("reset", "password changed"))
        log.info("admin channel: password of %s changed, %d sessions closed", username, len(sessions))
        return {"jid": str(JID.make(username, self.server.domain)), "closed": len(sessions)}

    async def user_del(self, request: dict[str, Any]) -> dict[str, Any]:
        username = self._username(request)
        jid = JID.make(username, self.server.domain)
        sessions = len(self.server.sessions.sessions_of(jid))
        if not await delete_account(self.server, username):  # closes the sessions with <not-authorized/>
            raise ChannelError(f"no account {username!r}", "not-found")
        log.info("admin channel: deleted %s, %d sessions closed", username, sessions)
        return {"jid": str(jid), "closed": sessions}


def _credentials(request: dict[str, Any]) -> Any:
    try:
        return credentials_from_wire(request.get("credentials"))
    except ValueError as exc:
        raise ChannelError(f"bad credentials: {exc}", "bad-request") from exc


# -- the socket ---------------------------------------------------------------------------------------------


def _peer_allowed(writer: asyncio.StreamWriter) -> bool:
    """Only the server's own user (or root) may speak, whatever the socket's mode says (SO_PEERCRED)."""
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return True
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return uid in (0, os.getuid())


async def _serve_client(
    channel: AdminChannel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One client of the channel: requests answered in order until it closes or stays silent."""
    try:
        if not _peer_allowed(writer):
            writer.write(encode({"ok": False, "error": "not allowed", "code": "unavailable"}))
            return
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
            except (TimeoutError, ValueError):  # silent, or a line past MAX_REQUEST
                return
            if not line:
                return
            writer.write(encode(await _answer(channel, line)))
            await asyncio.wait_for(writer.drain(), IDLE_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        log.debug("admin channel client gone: %s", exc)
    except Exception:
        log.exception("admin channel client failed")  # the boundary: one client never stops the channel
    finally:
        writer.close()


async def _answer(channel: AdminChannel, line: bytes) -> dict[str, Any]:
    try:
        request = decode(line)
    except ValueError as exc:
        return {"ok": False, "error": f"not a JSON object: {exc}", "code": "bad-request"}
    try:
        return {"ok": True, "result": await channel.handle(request)}
    except ChannelError as exc:
        return {"ok": False, "error": str(exc), "code": exc.code}
    except StorageError as exc:
        return {"ok": False, "error": f"storage: {exc}", "code": "unavailable"}


def _bind(path: Path) -> socket.socket | None:
    """A listening socket at `path`, created with mode 0600; None when a live server already holds it."""
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: left by a server that died
        else:
            return None
        finally:
            probe.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file is born 0600: no moment where others may connect
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(16)
    sock.setblocking(False)
    return sock


@asynccontextmanager
async def serve_admin(server: Running, listening: Listeners | None = None) -> AsyncIterator[AdminChannel]:
    """The channel (and the pid file) for the lifetime of the server; an unusable socket path is logged
    and the server runs without the channel. A successor (upgrade) inherits the socket and writes the pid
    file once it is ready, not here."""
    channel = AdminChannel(server)
    undo = server.bus.add("resource-bind", channel.on_bind, priority=1000)
    clients: set[asyncio.Task[None]] = set()
    listening = listening if listening is not None else Listeners()
    path = socket_path(server.config)
    inode: int | None = None
    pid_file = pid_path(server.config)
    if pid_file is not None and not listening.from_predecessor:
        write_pid_file(pid_file)

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        clients.add(task)
        try:
            await _serve_client(channel, reader, writer)
        finally:
            clients.discard(task)

    servers: list[asyncio.Server] = []

    async def start(sockets: list[socket.socket]) -> Stop:
        listener = await asyncio.start_unix_server(accept, sock=sockets[0], limit=MAX_REQUEST)
        servers.append(listener)
        return listener.close

    if path is not None:
        inherited = listening.take("admin")
        try:
            sock = inherited[0] if inherited else _bind(path)
        except OSError as exc:
            log.error("admin channel off: cannot listen on %s: %s", path, exc)
        else:
            if sock is None:
                log.warning("admin channel off: another running server answers on %s", path)
            else:
                inode = os.stat(path).st_ino
                await listening.serve("admin", [sock], start)
                log.info("admin channel on %s", path)
    try:
        yield channel
    finally:
        undo()
        for listener in servers:
            listener.close()
        for task in list(clients):
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        if path is not None and inode is not None and not listening.handed_over:
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == inode:  # still ours, not a successor's
                    path.unlink()
        if pid_file is not None:
            remove_pid_file(pid_file)
