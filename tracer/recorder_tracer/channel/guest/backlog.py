"""The guest's backlog: every data frame until the collector has written it.

Frames get consecutive sequence numbers (from 1, per daemon run) and stay
until an ACK says the collector wrote them, so a collector that dies (even
by kill -9) gets them again from its next run. The backlog is bounded in
bytes: past the limit the oldest frames go, and what they held is counted
by kind (records, console lines, metrics, snapshots) and by sequence range,
so the collector can name each gap and its contents exactly.

    backlog = Backlog(limit=32 << 20)
    seq = backlog.add(Kind.RECORDS, payload, items=4096)
    frames = backlog.frames_from(seq, max_bytes=1 << 20)   # what to send
    backlog.ack(seq)                                       # written: forget
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from recorder_tracer.channel.wire import Kind, frame

DEFAULT_LIMIT = 32 << 20
MAX_RANGES = 256        # dropped ranges remembered for the collector


@dataclass(frozen=True, slots=True)
class Held:
    """One frame in the backlog."""

    seq: int
    kind: Kind
    items: int
    data: bytes


@dataclass
class Dropped:
    """What the backlog dropped: totals and the latest sequence ranges."""

    frames: int = 0
    bytes: int = 0
    items: dict[str, int] = field(default_factory=dict)
    # [first, last, {kind: items}] of consecutive dropped frames.
    ranges: deque[list] = field(default_factory=lambda: deque(maxlen=MAX_RANGES))

    def add(self, held: Held) -> None:
        name = held.kind.name.lower()
        self.frames += 1
        self.bytes += len(held.data)
        self.items[name] = self.items.get(name, 0) + held.items
        if self.ranges and self.ranges[-1][1] == held.seq - 1:
            self.ranges[-1][1] = held.seq
        else:
            self.ranges.append([held.seq, held.seq, {}])
        counts = self.ranges[-1][2]
        counts[name] = counts.get(name, 0) + held.items

    def as_json(self) -> dict:
        return {"frames": self.frames, "bytes": self.bytes, "items": dict(self.items),
                "ranges": [[r[0], r[1], dict(r[2])] for r in self.ranges]}


class Backlog:
    """Sequence-numbered frames, bounded in bytes; thread-safe."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1 << 16:
            raise ValueError("a backlog needs at least 64 KiB")
        self.limit = limit
        self._frames: deque[Held] = deque()
        self._bytes = 0
        self.next_seq = 1
        self.acked = 0
        self.dropped = Dropped()
        self.produced: dict[str, int] = {}     # items framed, by kind
        self.changed = threading.Condition()

    def add(self, kind: Kind, payload: bytes, items: int = 1) -> int:
        """Frame `payload` with the next sequence number; drop the oldest
        frames while over the limit. Returns the sequence number."""
        with self.changed:
            seq = self.next_seq
            self.next_seq += 1
            name = kind.name.lower()
            self.produced[name] = self.produced.get(name, 0) + items
            # Text (metrics, snapshots) shrinks well; record batches are
            # compact already and zlib would cost more than the wire saves.
            held = Held(seq, kind, items, frame(
                kind, payload, seq, compress=kind in (Kind.METRICS, Kind.SNAPSHOT)))
            self._frames.append(held)
            self._bytes += len(held.data)
            while self._bytes > self.limit and len(self._frames) > 1:
                oldest = self._frames.popleft()
                self._bytes -= len(oldest.data)
                self.dropped.add(oldest)
            self.changed.notify_all()
            return seq

    def ack(self, seq: int) -> None:
        """The collector has written everything up to `seq`: forget it."""
        with self.changed:
            self.acked = max(self.acked, seq)
            while self._frames and self._frames[0].seq <= seq:
                self._bytes -= len(self._frames.popleft().data)
            self.changed.notify_all()

    @property
    def first_seq(self) -> int:
        """The oldest sequence number still held (next_seq when empty)."""
        with self.changed:
            return self._frames[0].seq if self._frames else self.next_seq

    def held_bytes(self) -> int:
        with self.changed:
            return self._bytes

    def frames_from(self, seq: int, max_bytes: int = 1 << 20,
                    timeout: float | None = None) -> tuple[int, bytes]:
        """Frames from `seq` on (or from the oldest held, if `seq` is gone),
        up to about `max_bytes`, waiting up to `timeout` for one: (the
        sequence number after the last one returned, their bytes)."""
        with self.changed:
            if not self._frames or self._frames[-1].seq < seq:
                self.changed.wait(timeout)
            if not self._frames or self._frames[-1].seq < seq:
                return seq, b""
            start = max(0, seq - self._frames[0].seq)
            chunks = []
            size = 0
            end = seq
            for index in range(start, len(self._frames)):
                held = self._frames[index]
                chunks.append(held.data)
                size += len(held.data)
                end = held.seq + 1
                if size >= max_bytes:
                    break
            return end, b"".join(chunks)

    def wake(self) -> None:
        with self.changed:
            self.changed.notify_all()
