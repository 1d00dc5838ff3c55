"""The storage exception tree: what callers of any backend (SQL, Redis ring, cache) may catch."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every storage failure; a bare StorageError is a bug or bad data, retrying will not help."""


class StorageUnavailable(StorageError):
    """The backend is unreachable, locked, timed out or broken: nothing was written; try again later.

    The server answers `wait`/`internal-server-error` instead of acknowledging the write.
    """


class QuotaExceeded(StorageError):
    """A per-account quota is reached (offline messages, roster items, PEP items, private XML elements):
    nothing was stored."""


class AlreadyExists(StorageError):
    """An account with that username already exists."""


class NoSuchAccount(StorageError):
    """The operation needs an account that does not exist (e.g. a roster write for an unknown user)."""


class ItemNotFound(StorageError):
    """A reference to a stored item names nothing (e.g. an archive RSM after/before id of no message)."""
