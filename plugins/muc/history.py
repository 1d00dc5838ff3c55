"""Discussion history sent on entry (XEP-0045 §7.2.15): the request, its hard cap, the selection."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from xml.etree.ElementTree import Element

from plugins.muc.xml import MUC, q


@dataclass(frozen=True, slots=True)
class Entry:
    """One archived groupchat message: its text as sent to occupants (without 'to'), when, its id."""

    xml: str
    stamp: float  # seconds since the epoch
    stanza_id: str
    sender: str  # the occupant JID room@service/nick it came from


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    maxchars: int | None = None
    maxstanzas: int | None = None
    seconds: int | None = None
    since: float | None = None


def _non_negative(text: str | None) -> int | None:
    # XEP-0045 §7.2.15: the attributes are non-negative integers; another value is ignored (as Prosody does)
    if text is None or not text.isdigit():
        return None
    return int(text)


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_request(x: Element | None) -> HistoryRequest:
    """The <history/> inside the join's <x xmlns=muc/>; no element: the service's default."""
    history = None if x is None else x.find(q("history", MUC))
    if history is None:
        return HistoryRequest()
    return HistoryRequest(
        maxchars=_non_negative(history.get("maxchars")),
        maxstanzas=_non_negative(history.get("maxstanzas")),
        seconds=_non_negative(history.get("seconds")),
        since=_timestamp(history.get("since")),
    )


def select(
    entries: Iterable[Entry], request: HistoryRequest, *, now: float, default: int, cap: int
) -> list[Entry]:
    """The newest entries that satisfy every limit of `request` (§7.2.15: all apply together), oldest
    first. maxstanzas is capped at `cap` (a request for 10^9 gets `cap`); no limit asks for `default`."""
    wanted = request.maxstanzas if request.maxstanzas is not None else default
    limit = min(wanted, cap)
    oldest = float("-inf")
    if request.seconds is not None:
        oldest = now - request.seconds
    if request.since is not None:
        oldest = max(oldest, request.since)
    chosen: list[Entry] = []
    chars = 0
    for entry in reversed(list(entries)):
        if len(chosen) >= limit or entry.stamp < oldest:
            break
        if request.maxchars is not None:
            chars += len(entry.xml)
            if chars > request.maxchars:
                break
        chosen.append(entry)
    chosen.reverse()
    return chosen


class History:
    """The newest `size` entries of a room, kept in memory for joins (the archive keeps them all)."""

    def __init__(self, size: int, entries: Iterable[Entry] = ()) -> None:
        self.entries: deque[Entry] = deque(entries, maxlen=size)

    def add(self, entry: Entry) -> None:
        self.entries.append(entry)
