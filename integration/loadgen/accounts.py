"""The benchmark accounts: names, the shared password and salt, and who is whose contact.

Every account has the same password and the same salt, so the load generator derives its SCRAM keys
once (the server's work per login does not depend on it). Contacts are ring neighbours with mutual
subscriptions ('both'), so every presence a user sends has `roster_size` recipients.
"""

from __future__ import annotations

PASSWORD = "loadgen password"
SALT = b"nitro-loadgen-salt"  # ASCII: Prosody keeps the salt as a Lua string
ITERATIONS = 4096  # RFC 7677 §4 minimum, and Nitro's default
USER_FORMAT = "u{:05d}"  # localpart of account N


def contacts(index: int, users: int, roster_size: int) -> list[int]:
    """The ring neighbours of `index`: roster_size // 2 on each side (everyone, in a small ring)."""
    if users <= 1 or roster_size <= 0:
        return []
    if roster_size >= users - 1:
        return [j for j in range(users) if j != index]
    half = roster_size // 2
    return sorted({(index + k) % users for k in range(-half, half + 1) if k != 0})
