"""Unauthenticated streams are parsed on short-lived threads, so that the XML names they make lxml remember
are forgotten with them (issue 11 item 1).

lxml interns every element and attribute name (and prefixes, and text of up to three characters) in a
dictionary per thread that never shrinks: parsed on the event loop's thread, a peer with no account could
grow the process for good by sending distinct names. A parser first fed on another thread uses that thread's
own dictionary, which is freed when the thread has ended and the last document parsed with it is gone.

So a stream is parsed, until it authenticates, on the thread of a `Generation`: one thread serving up to
`[limits].preauth_streams_per_thread` streams, replaced by a fresh one when full, and ended when the last
of its streams has authenticated or closed. Each call runs synchronously (the event loop waits for it, as
it would for parsing on its own thread): only one thread ever runs lxml at a time, so the documents parsed
there can be read and changed on the loop's thread afterwards without locking. A hand-over (a hop) goes
through two pipes and costs ~6 µs of CPU (two bare locks cost ~13: see `_CallThread`); a plain SCRAM login
makes three (its header, `<auth/>`, `<response/>`), the restart's parser being freed with a later call
(`Lane.later`) rather than with a hop of its own.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_STOP_WAIT = 5.0  # seconds a stopping thread is waited for; it is idle, so it takes one hop


class _CallThread:
    """A thread that runs one call at a time for a caller that waits for it, handed over and back through two
    pipes. With two bare locks a hop took twice the CPU (~13-15 µs against ~6-7 µs, both threads pinned to one
    core; a ThreadPoolExecutor's future more still), likely because releasing a lock keeps the GIL, so the
    thread woken first finds it taken, while a pipe's write lets go of the GIL for its system call."""

    __slots__ = ("_call", "_done", "_error", "_go", "_result", "_thread")

    def __init__(self, name: str) -> None:
        self._go = os.pipe()  # a byte in it: a call (or None: stop) waits in `_call`
        self._done = os.pipe()  # a byte in it: the call returned or raised
        self._call: tuple[Callable[..., Any], tuple[object, ...]] | None = None
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def run(self, function: Callable[..., _T], *args: object) -> _T:
        self._call = (function, args)
        os.write(self._go[1], b"\0")
        os.read(self._done[0], 1)
        result, error = self._result, self._error
        self._result = self._error = None
        if error is not None:
            raise error
        return result  # type: ignore[no-any-return]

    def stop(self) -> None:
        """The thread ends and closes the pipes; returns once it has (it is idle: calls are made and awaited
        by one thread, so this is one hop). Waiting matters for memory: a thread started while the last one is
        still exiting gets a malloc arena of its own instead of reusing the one the last thread gave back."""
        self._call = None
        os.write(self._go[1], b"\0")
        self._thread.join(_STOP_WAIT)

    def _serve(self) -> None:
        go, done = self._go[0], self._done[1]
        try:
            while True:
                os.read(go, 1)
                call, self._call = self._call, None
                if call is None:
                    return
                try:
                    self._result = call[0](*call[1])
                except BaseException as error:  # handed to the caller, as a future would
                    self._error = error
                # nothing of the call outlives it here: held until the next call, its arguments (a stream's
                # parser) would become garbage whenever that came, on this thread
                del call
                os.write(done, b"\0")
        finally:
            for fd in (*self._go, *self._done):
                os.close(fd)


def _after(pending: list[Callable[[], object]], function: Callable[..., _T], args: tuple[object, ...]) -> _T:
    """Run the calls put off on a generation (`Generation.later`), then the call it was given."""
    for call in pending:
        try:
            call()
        except Exception:  # not the caller's: its own call still runs
            log.exception("a call put off on a pre-authentication parsing thread failed")
    return function(*args)


def _nothing() -> None:
    return None


class Generation:
    """One parsing thread and the streams assigned to it."""

    __slots__ = ("_later", "_thread", "assigned", "number", "open", "stopped")

    def __init__(self, number: int) -> None:
        self.number = number
        self._thread = _CallThread(f"nitro-preauth-{number}")
        self._later: list[Callable[[], object]] = []  # calls put off until the next one (`later`)
        self.assigned = 0  # streams ever given this generation
        self.open = 0  # of which not yet released
        self.stopped = False

    def run(self, function: Callable[..., _T], *args: object) -> _T:
        if self.stopped:  # only after `PreauthParsing.close`, at shutdown
            return function(*args)
        if self._later:
            pending, self._later = self._later, []
            result: _T = self._thread.run(_after, pending, function, args)
            return result
        return self._thread.run(function, *args)

    def later(self, call: Callable[[], object]) -> None:
        """`call()` on this thread before its next call or as it stops, whichever comes first: no hop of its
        own (what the loop's thread no longer needs, such as a restarted stream's parser to free)."""
        if self.stopped:
            call()
        else:
            self._later.append(call)

    def stop(self) -> None:
        if self._later:
            self.run(_nothing)
        self.stopped = True
        self._thread.stop()  # the thread ends now; its dictionary with the last of its documents


class Lane:
    """A stream's place on a generation's thread until `release` (idempotent)."""

    __slots__ = ("_generation", "_owner")

    def __init__(self, owner: PreauthParsing, generation: Generation) -> None:
        self._owner = owner
        self._generation: Generation | None = generation

    def run(self, function: Callable[..., _T], *args: object) -> _T:
        """`function(*args)` on the lane's thread (on the caller's once released)."""
        generation = self._generation
        if generation is None:
            return function(*args)
        return generation.run(function, *args)

    def later(self, function: Callable[..., object], *args: object) -> None:
        """`function(*args)` on the lane's thread with its generation's next call or end (see
        `Generation.later`); on the caller's once released."""
        generation = self._generation
        if generation is None:
            function(*args)
        else:
            generation.later(functools.partial(function, *args))

    @property
    def stopped(self) -> bool:
        """Its thread was stopped (at shutdown) while the stream still held the lane: `run` runs inline."""
        return self._generation is not None and self._generation.stopped

    def release(self) -> None:
        generation, self._generation = self._generation, None
        if generation is not None:
            self._owner.left(generation)


class PreauthParsing:
    """Hands out lanes on the current generation; opens the next generation when it is full and stops a
    generation's thread when its last stream leaves. `streams_per_thread` 0: no threads (lanes run inline)."""

    def __init__(self, streams_per_thread: Callable[[], int]) -> None:
        self._streams_per_thread = streams_per_thread
        self._current: Generation | None = None
        self._live: set[Generation] = set()
        self._numbers = 0
        self._lock = threading.Lock()  # lanes are taken and released on the loop's thread; cheap insurance

    @property
    def threads(self) -> int:
        """Parsing threads not yet stopped."""
        return len(self._live)

    def lane(self) -> Lane | None:
        """A lane for a new unauthenticated stream, or None when parsing threads are off."""
        size = self._streams_per_thread()
        if size <= 0:
            return None
        with self._lock:
            generation = self._current
            if generation is None or generation.assigned >= size:
                if generation is not None:
                    self._retire(generation)
                self._numbers += 1
                generation = self._current = Generation(self._numbers)
                self._live.add(generation)
            generation.assigned += 1
            generation.open += 1
        return Lane(self, generation)

    def left(self, generation: Generation) -> None:
        with self._lock:
            generation.open -= 1
            if generation is not self._current and generation.open == 0:
                self._stop(generation)

    def close(self) -> None:
        """Stop every thread (at shutdown; lanes still held then run inline)."""
        with self._lock:
            for generation in list(self._live):
                self._stop(generation)
            self._current = None

    def _retire(self, generation: Generation) -> None:
        self._current = None
        if generation.open == 0:
            self._stop(generation)

    def _stop(self, generation: Generation) -> None:
        if generation in self._live:
            self._live.discard(generation)
            generation.stop()
            log.debug("pre-authentication parsing thread %d stopped", generation.number)
