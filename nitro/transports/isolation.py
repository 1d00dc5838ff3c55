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
there can be read and changed on the loop's thread afterwards without locking. The hand-overs (two bare
locks each) and the threads cost some 32 microseconds of CPU per login (a plain SCRAM login's pre-auth
stream parsed: 49 µs inline, 82 µs on lanes; 119 µs with a ThreadPoolExecutor per generation).
"""

from __future__ import annotations

import _thread
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class _CallThread:
    """A thread that runs one call at a time for a caller that waits for it: two bare locks hand the call
    over and back (a ThreadPoolExecutor's future, condition and queue cost twice the CPU per call)."""

    __slots__ = ("_call", "_done", "_error", "_go", "_result")

    def __init__(self, name: str) -> None:
        self._go = _thread.allocate_lock()  # released: a call (or None: stop) waits in `_call`
        self._done = _thread.allocate_lock()  # released: the call returned or raised
        self._go.acquire()
        self._done.acquire()
        self._call: tuple[Callable[..., Any], tuple[object, ...]] | None = None
        self._result: Any = None
        self._error: BaseException | None = None
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def run(self, function: Callable[..., _T], *args: object) -> _T:
        self._call = (function, args)
        self._go.release()
        self._done.acquire()
        result, error = self._result, self._error
        self._result = self._error = None
        if error is not None:
            raise error
        return result  # type: ignore[no-any-return]

    def stop(self) -> None:
        """The thread ends (it is idle: calls are made and awaited by one thread)."""
        self._call = None
        self._go.release()

    def _serve(self) -> None:
        while True:
            self._go.acquire()
            call, self._call = self._call, None
            if call is None:
                return
            function, args = call
            try:
                self._result = function(*args)
            except BaseException as error:  # handed to the caller, as a future would
                self._error = error
            self._done.release()


class Generation:
    """One parsing thread and the streams assigned to it."""

    __slots__ = ("_thread", "assigned", "number", "open", "stopped")

    def __init__(self, number: int) -> None:
        self.number = number
        self._thread = _CallThread(f"nitro-preauth-{number}")
        self.assigned = 0  # streams ever given this generation
        self.open = 0  # of which not yet released
        self.stopped = False

    def run(self, function: Callable[..., _T], *args: object) -> _T:
        if self.stopped:  # only after `PreauthParsing.close`, at shutdown
            return function(*args)
        return self._thread.run(function, *args)

    def stop(self) -> None:
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
