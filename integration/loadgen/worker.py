"""Worker processes of the load generator: each runs its share of the clients on its own uvloop.

The parent sends commands over a pipe (`Login`, `ChatStep`, …) and merges the reports; every report
carries the worker's own CPU time (resource.getrusage), so a run where the generator was the
bottleneck shows it. Chat pairs live in one worker, so latencies are measured by one clock reader.
"""

from __future__ import annotations

import array
import asyncio
import gc
import ipaddress
import multiprocessing
import multiprocessing.connection
import os
import random
import re
import socket
import ssl
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from types import TracebackType
from typing import Self

from integration.loadgen.accounts import USER_FORMAT
from integration.loadgen.client import LoginPlan, Stanza
from integration.loadgen.connection import Connection, LoginFailed, connect
from integration.loadgen.scram import Mechanism
from integration.loadgen.stats import own_cpu_seconds

CHAT_TICK = 0.002  # seconds between two rounds of the chat pacer


class LoadgenError(Exception):
    """The load generator itself failed (a worker died, or the target is not allowed)."""


@dataclass(frozen=True, slots=True)
class Target:
    """The server under test and the accounts on it (users are user_format.format(index))."""

    host: str
    port: int
    domain: str
    password: str
    mechanism: Mechanism = "SCRAM-SHA-1"
    starttls: bool = False
    cafile: str | None = None  # trust this CA file (e.g. the server's self-signed certificate)
    verify: bool = True  # False: accept any certificate (loopback benchmarks only)
    user_format: str = USER_FORMAT

    def username(self, index: int) -> str:
        return self.user_format.format(index)

    def jid(self, index: int) -> str:
        return f"{self.username(index)}@{self.domain}"


def check_loopback(host: str) -> None:
    """Refuse a target that is not on this machine: the generator is for loopback benchmarks only."""
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except socket.gaierror as error:
        raise LoadgenError(f"cannot resolve {host!r}: {error}") from None
    outside = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if not addresses or outside:
        raise LoadgenError(f"refusing non-loopback target {host!r} ({', '.join(outside) or 'no address'})")


def client_ssl_context(target: Target) -> ssl.SSLContext | None:
    if not target.starttls:
        return None
    if target.verify:
        context = ssl.create_default_context(cafile=target.cafile)
    else:  # loopback benchmark against a throwaway certificate: encryption without authentication
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


# --- commands (parent → worker) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Login:
    """Log every client of the worker in at once (those not connected yet)."""

    roster: bool = True
    presence: bool = True
    timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class Logout:
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class ChatStep:
    """Pairs message each other at `rate` messages/s (this worker's share) for `duration` seconds."""

    step: int
    rate: float
    start_at: float  # time.monotonic() (the same clock in every process)
    duration: float
    drain: float  # seconds to wait for the step's last messages


@dataclass(frozen=True, slots=True)
class PresenceStorm:
    """Every client logs out and in again, staying online online_min..online_max seconds each time."""

    start_at: float
    duration: float
    online_min: float
    online_max: float
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class Stop:
    pass


Command = Ping | Login | Logout | ChatStep | PresenceStorm | Stop


# --- reports (worker → parent) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pong:
    cpu: float


@dataclass(frozen=True, slots=True)
class LoginReport:
    cpu: float
    ok: int
    durations: tuple[float, ...]  # seconds from TCP connect to the roster (or bind) result
    first_start: float
    last_done: float
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LogoutReport:
    cpu: float
    closed: int


@dataclass(frozen=True, slots=True)
class ChatReport:
    cpu: float
    step: int
    sent: int
    skipped: int  # not sent: the connection's buffer towards the server was full
    delivered_in_window: int  # messages of this step received during the step
    latencies_ns: bytes  # array('q') of end-to-end latencies of this step's messages
    started: float
    ended: float  # end of the drain
    errors: int  # message stanzas of type error


@dataclass(frozen=True, slots=True)
class PresenceReport:
    cpu: float
    presence_in_window: int
    cycles: int
    durations: tuple[float, ...]
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Crashed:
    cpu: float
    traceback: str


Report = Pong | LoginReport | LogoutReport | ChatReport | PresenceReport | Crashed


# --- the worker process -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    index: int
    target: Target
    users: tuple[int, ...]  # even count: (users[0], users[1]) are a chat pair, and so on
    cpus: frozenset[int] | None


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_BODY = re.compile(rb"<body>(\d+) (\d+)</body>")


class _Chat:
    """What the receiving side of one chat step counts."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.latencies = array.array("q")
        self.window_end_ns = 1 << 62
        self.delivered_in_window = 0
        self.errors = 0

    def receive(self, raw: bytes) -> None:
        match = _BODY.search(raw)
        if match is None:
            if b"type='error'" in raw or b'type="error"' in raw:
                self.errors += 1
            return
        now = time.monotonic_ns()
        if int(match.group(1)) != self.step:
            return  # a late message of an earlier step
        self.latencies.append(now - int(match.group(2)))
        if now <= self.window_end_ns:
            self.delivered_in_window += 1


class Worker:
    def __init__(self, spec: WorkerSpec, pipe: Pipe) -> None:
        self.spec = spec
        self.target = spec.target
        self.pipe = pipe
        self.ssl_context = client_ssl_context(spec.target)
        self.connections: dict[int, Connection] = {}
        self.presence_received = 0
        self.chat: _Chat | None = None

    async def serve(self) -> None:
        while True:
            try:
                command = await self._receive()
            except EOFError:
                break  # the parent is gone
            try:
                report = await self._handle(command)
            except Exception:
                report = Crashed(own_cpu_seconds(), traceback.format_exc())
            # uvloop's add_reader left the pipe non-blocking; a large report must not hit EAGAIN.
            os.set_blocking(self.pipe.fileno(), True)
            self.pipe.send(report)
            if isinstance(command, Stop):
                break
        for connection in self.connections.values():
            connection.abort()

    async def _receive(self) -> Command:
        loop = asyncio.get_running_loop()
        while not self.pipe.poll():
            readable: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self.pipe.fileno(), _set_once, readable)
            try:
                await readable
            finally:
                loop.remove_reader(self.pipe.fileno())
        command: Command = self.pipe.recv()
        return command

    async def _handle(self, command: Command) -> Report:
        match command:
            case Ping() | Stop():
                return Pong(own_cpu_seconds())
            case Login():
                return await self.login(command)
            case Logout():
                return await self.logout(command)
            case ChatStep():
                return await self.chat_step(command)
            case PresenceStorm():
                return await self.presence_storm(command)
        raise AssertionError(f"unknown command {command!r}")

    def _on_stanza(self, _connection: Connection, stanza: Stanza) -> None:
        if stanza.name == b"message":
            if self.chat is not None:
                self.chat.receive(stanza.raw)
        elif stanza.name == b"presence":
            self.presence_received += 1

    def _plan(self, index: int, *, roster: bool, presence: bool) -> LoginPlan:
        target = self.target
        return LoginPlan(
            domain=target.domain,
            username=target.username(index),
            password=target.password,
            mechanism=target.mechanism,
            starttls=target.starttls,
            resource=f"load{index}",
            roster=roster,
            presence=presence,
        )

    async def _connect(self, index: int, *, roster: bool, presence: bool, timeout: float) -> float:
        """Log one client in; returns the login time in seconds (raises LoginFailed)."""
        started = time.monotonic()
        connection = await connect(
            self.target.host,
            self.target.port,
            self._plan(index, roster=roster, presence=presence),
            ssl_context=self.ssl_context,
            timeout=timeout,
            on_stanza=self._on_stanza,
        )
        self.connections[index] = connection
        connection.ended.add_done_callback(lambda _: self._forget(index, connection))
        return connection.logged_in.result() - started

    def _forget(self, index: int, connection: Connection) -> None:
        if self.connections.get(index) is connection:
            del self.connections[index]

    # --- scenarios ------------------------------------------------------------------------------

    async def login(self, command: Login) -> LoginReport:
        errors: Counter[str] = Counter()
        durations: list[float] = []
        done: list[float] = []

        async def one(index: int) -> None:
            try:
                durations.append(
                    await self._connect(
                        index, roster=command.roster, presence=command.presence, timeout=command.timeout
                    )
                )
                done.append(time.monotonic())
            except LoginFailed as failure:
                errors[failure.reason] += 1

        first_start = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for index in self.spec.users:
                if index not in self.connections:
                    group.create_task(one(index))
        return LoginReport(
            own_cpu_seconds(),
            ok=len(durations),
            durations=tuple(durations),
            first_start=first_start,
            last_done=max(done, default=first_start),
            errors=dict(errors),
        )

    async def logout(self, command: Logout) -> LogoutReport:
        connections = list(self.connections.values())
        await asyncio.gather(*(c.close(command.timeout) for c in connections))
        self.connections.clear()
        return LogoutReport(own_cpu_seconds(), closed=len(connections))

    async def chat_step(self, command: ChatStep) -> ChatReport:
        chat = self.chat = _Chat(command.step)
        users = self.spec.users
        senders: list[tuple[Connection, bytes]] = []
        for a, b in zip(users[::2], users[1::2], strict=False):
            first, second = self.connections.get(a), self.connections.get(b)
            if first is not None and second is not None:
                for sender, recipient in ((first, b), (second, a)):
                    prefix = f"<message type='chat' to='{self.target.jid(recipient)}'><body>".encode()
                    senders.append((sender, prefix))
        await asyncio.sleep(max(0.0, command.start_at - time.monotonic()))
        started = time.monotonic()
        end = started + command.duration
        chat.window_end_ns = int(end * 1e9)
        sent = skipped = position = 0
        step, rate, count = command.step, command.rate, len(senders)
        monotonic, monotonic_ns = time.monotonic, time.monotonic_ns
        while count and (now := monotonic()) < end:
            for _ in range(int((now - started) * rate) - sent - skipped):
                connection, prefix = senders[position]
                position = position + 1 if position + 1 < count else 0
                transport = connection.transport
                if transport is None or connection.paused:
                    skipped += 1
                    continue
                transport.write(prefix + b"%d %d</body></message>" % (step, monotonic_ns()))
                sent += 1
            await asyncio.sleep(CHAT_TICK)
        drain_until = monotonic() + command.drain
        while len(chat.latencies) < sent and monotonic() < drain_until:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        self.chat = None
        return ChatReport(
            own_cpu_seconds(),
            step=command.step,
            sent=sent,
            skipped=skipped,
            delivered_in_window=chat.delivered_in_window,
            latencies_ns=chat.latencies.tobytes(),
            started=started,
            ended=monotonic(),
            errors=chat.errors,
        )

    async def presence_storm(self, command: PresenceStorm) -> PresenceReport:
        errors: Counter[str] = Counter()
        durations: list[float] = []
        await asyncio.sleep(max(0.0, command.start_at - time.monotonic()))
        started = time.monotonic()
        end = started + command.duration
        received_before = self.presence_received

        async def cycle(index: int) -> None:
            rng = random.Random(index)
            await asyncio.sleep(rng.uniform(0.0, command.online_max))
            while time.monotonic() < end:
                connection = self.connections.get(index)
                if connection is not None:
                    await connection.close(command.timeout)
                if time.monotonic() >= end:
                    return
                try:
                    durations.append(
                        await self._connect(index, roster=True, presence=True, timeout=command.timeout)
                    )
                except LoginFailed as failure:
                    errors[failure.reason] += 1
                    await asyncio.sleep(min(0.5, max(0.0, end - time.monotonic())))
                    continue
                online = rng.uniform(command.online_min, command.online_max)
                await asyncio.sleep(min(online, max(0.0, end - time.monotonic())))

        async def window() -> int:
            await asyncio.sleep(max(0.0, end - time.monotonic()))
            return self.presence_received - received_before

        async with asyncio.TaskGroup() as group:
            counted = group.create_task(window())
            for index in self.spec.users:
                group.create_task(cycle(index))
        return PresenceReport(
            own_cpu_seconds(),
            presence_in_window=counted.result(),
            cycles=len(durations),
            durations=tuple(durations),
            errors=dict(errors),
        )


def worker_main(spec: WorkerSpec, pipe: Pipe) -> None:
    """Entry point of a worker process."""
    if spec.cpus:
        os.sched_setaffinity(0, spec.cpus)
    # Fewer, later collections: a GC pause here would show up as server latency.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    import uvloop  # a dependency of Nitro; imported here so the parent need not load it

    uvloop.run(Worker(spec, pipe).serve())


# --- the parent side --------------------------------------------------------------------------------


def split_users(users: Sequence[int], workers: int) -> list[tuple[int, ...]]:
    """Contiguous shares of even size (chat pairs stay in one worker); empty shares are dropped."""
    pairs = [tuple(users[i : i + 2]) for i in range(0, len(users), 2)]
    shares: list[list[int]] = [[] for _ in range(max(1, workers))]
    for n, pair in enumerate(pairs):
        shares[n * len(shares) // max(1, len(pairs))].extend(pair)
    return [tuple(share) for share in shares if share]


class WorkerPool:
    """`workers` processes sharing `users`; `request` sends a command to each and merges nothing."""

    def __init__(
        self, target: Target, users: Sequence[int], *, workers: int, cpus: frozenset[int] | None = None
    ) -> None:
        check_loopback(target.host)
        self.target = target
        self.shares = split_users(users, workers)
        self.cpus = cpus
        self._context = multiprocessing.get_context("spawn")  # no inherited event loop or threads
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._pipes: list[Pipe] = []
        self.cpu: list[float] = []  # each worker's CPU seconds at its latest report

    def __enter__(self) -> Self:
        try:
            for index, share in enumerate(self.shares):
                parent_end, child_end = self._context.Pipe()
                spec = WorkerSpec(index, self.target, share, self.cpus)
                process = self._context.Process(
                    target=worker_main, args=(spec, child_end), name=f"loadgen-{index}", daemon=True
                )
                process.start()
                child_end.close()
                self._processes.append(process)
                self._pipes.append(parent_end)
                self.cpu.append(0.0)
            self.request(Ping(), timeout=60.0)
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()

    @property
    def size(self) -> int:
        return len(self._processes)

    def worker_cpu(self) -> float:
        return sum(self.cpu)

    def request(self, commands: Command | Sequence[Command], timeout: float) -> list[Report]:
        """Send one command (or one per worker) and wait for every report (bounded)."""
        each = [commands] * len(self._pipes) if not isinstance(commands, Sequence) else list(commands)
        for pipe, command in zip(self._pipes, each, strict=True):
            pipe.send(command)
        reports: list[Report | None] = [None] * len(self._pipes)
        deadline = time.monotonic() + timeout
        waiting = dict(enumerate(self._pipes))
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LoadgenError(f"workers {sorted(waiting)} did not answer within {timeout:g} s")
            for ready in multiprocessing.connection.wait(list(waiting.values()), remaining):
                index = next(i for i, pipe in waiting.items() if pipe is ready)
                try:
                    report: Report = waiting[index].recv()
                except (EOFError, OSError):
                    self._processes[index].join(1.0)
                    code = self._processes[index].exitcode
                    raise LoadgenError(f"load generator worker {index} died (exit code {code})") from None
                if isinstance(report, Crashed):
                    raise LoadgenError(f"load generator worker {index} failed:\n{report.traceback}")
                reports[index] = report
                self.cpu[index] = report.cpu
                del waiting[index]
        return [r for r in reports if r is not None]

    def _stop(self) -> None:
        for index, pipe in enumerate(self._pipes):
            try:
                pipe.send(Stop())
                if pipe.poll(5.0):
                    report = pipe.recv()
                    self.cpu[index] = report.cpu
            except (OSError, EOFError):
                pass
        for process in self._processes:
            process.join(5.0)
            if process.is_alive():
                process.terminate()
                process.join(5.0)
        for pipe in self._pipes:
            pipe.close()
        self._processes.clear()
        self._pipes.clear()
