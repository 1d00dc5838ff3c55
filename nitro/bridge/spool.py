"""Observe events for one plugin until it acknowledges them: in order, bounded, resent after a reconnect,
and, with `[plugins.NAME] spool = DIR`, kept in an append-only file so a restart of the server loses none
(written and flushed per event: they survive a crash of the server process, not of the machine)."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from lxml import etree

from nitro.xmpp.xmlwrite import serialize

COMPACT_AFTER: Final = 1 << 20  # bytes of fully acknowledged log before it is truncated


class Spool:
    """The on-disk half: `events.jsonl` (seq, XML) appended, `acked` the highest acknowledged seq."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._log_path = directory / "events.jsonl"
        self._ack_path = directory / "acked"
        epoch_path = directory / "epoch"
        if not epoch_path.exists():
            epoch_path.write_text(secrets.token_hex(8))
        self.epoch = epoch_path.read_text().strip()
        self.acked = int(self._ack_path.read_text() or 0) if self._ack_path.exists() else 0
        self.entries: list[tuple[int, bytes]] = []
        self.last_seq = self.acked
        if self._log_path.exists():
            for line in self._log_path.read_bytes().splitlines():
                with contextlib.suppress(ValueError, KeyError):  # a line cut by a crash is dropped
                    record = json.loads(line)
                    seq = int(record["seq"])
                    self.last_seq = max(self.last_seq, seq)
                    if seq > self.acked:
                        self.entries.append((seq, record["xml"].encode()))
        self._file: BinaryIO = self._log_path.open("ab")

    def append(self, seq: int, xml: bytes) -> None:
        self._file.write(json.dumps({"seq": seq, "xml": xml.decode()}).encode() + b"\n")
        self._file.flush()
        self.last_seq = seq

    def ack(self, seq: int) -> None:
        if seq <= self.acked:
            return
        self.acked = seq
        temporary = self._ack_path.with_suffix(".tmp")
        temporary.write_text(str(seq))
        os.replace(temporary, self._ack_path)
        if seq >= self.last_seq and self._file.tell() > COMPACT_AFTER:
            self._file.truncate(0)
            self._file.seek(0)

    def close(self) -> None:
        self._file.close()


class Durable(Protocol):
    """Where unacknowledged events outlive the server: the file spool, or JetStream (bridge/jetstream)."""

    epoch: str
    entries: list[tuple[int, bytes]]
    last_seq: int

    def append(self, seq: int, xml: bytes) -> None: ...

    def ack(self, seq: int) -> None: ...

    def close(self) -> None: ...


class ObserveQueue:
    """Events to send (`pending`) and sent but not acknowledged (`unacked`, when the plugin acknowledges);
    together at most `limit`, past which new events are dropped and counted."""

    def __init__(self, limit: int, spool: Durable | None = None) -> None:
        self.limit = limit
        self.spool: Durable | None = None
        self.epoch = secrets.token_hex(8)
        self._seq = 0
        self.pending: collections.deque[tuple[int, etree._Element]] = collections.deque()
        self.unacked: dict[int, etree._Element] = {}
        self.acking = False  # the plugin registered with ack='true'
        self.dropped = 0
        if spool is not None:
            self.attach(spool)

    def attach(self, spool: Durable) -> None:
        """Keep events in `spool` from now on; what it still holds goes out first (before anything new)."""
        self.spool = spool
        self.epoch = spool.epoch
        self._seq = max(self._seq, spool.last_seq)
        self.pending.extendleft(reversed([(seq, etree.fromstring(xml)) for seq, xml in spool.entries]))

    def __len__(self) -> int:
        return len(self.pending) + len(self.unacked)

    def put(self, message: etree._Element) -> bool:
        """Number the event (its <event/> gets seq and spool) and hold it; False if dropped."""
        if len(self) >= self.limit:
            self.dropped += 1
            return False
        self._seq += 1
        event = message[0]
        event.set("seq", str(self._seq))
        event.set("spool", self.epoch)
        event.set("at", f"{time.time():.6f}")  # when the core saw it (a late delivery keeps its time)
        if self.spool is not None:
            self.spool.append(self._seq, serialize(message))
        self.pending.append((self._seq, message))
        return True

    def sent(self, seq: int, message: etree._Element) -> None:
        if self.acking:
            self.unacked[seq] = message
        elif self.spool is not None:
            self.spool.ack(seq)  # fire and forget: written is as good as it gets

    def ack(self, seq: int) -> None:
        """Cumulative: everything up to `seq` is safe with the plugin."""
        for done in [s for s in self.unacked if s <= seq]:
            del self.unacked[done]
        if self.spool is not None:
            self.spool.ack(seq)

    def resend(self) -> None:
        """After a reconnect: what was sent but never acknowledged goes out again, first."""
        if self.unacked:
            self.pending.extendleft(reversed(list(self.unacked.items())))
            self.unacked.clear()
