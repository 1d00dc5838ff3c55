"""The server's own service discovery registry: the features and identities its modules declare."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    category: str
    type: str
    name: str | None = None


class DiscoRegistry:
    """The server's own disco#info: features and identities, reference-counted by the modules adding them."""

    def __init__(self) -> None:
        self.features: Counter[str] = Counter()
        self.identities: Counter[Identity] = Counter()

    def add_feature(self, var: str) -> Callable[[], None]:
        self.features[var] += 1

        def remove() -> None:
            self.features[var] -= 1
            if self.features[var] <= 0:
                del self.features[var]

        return remove

    def add_identity(self, identity: Identity) -> Callable[[], None]:
        self.identities[identity] += 1

        def remove() -> None:
            self.identities[identity] -= 1
            if self.identities[identity] <= 0:
                del self.identities[identity]

        return remove
