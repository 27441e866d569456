"""Put records from several per-CPU streams back in timestamp order.

Each per-CPU stream is in order (a BPF ring buffer per CPU for recorder
topics, a perf buffer per CPU for USDT probes: kernel/stream.py), but the
controller reads them one after another, and with --usdt beside recorder
topics two programs' streams: a record read now may be older than one read
a moment ago. So records wait in a heap and leave oldest first; one buffer
shared by every stream gives one merged output.

How long they wait: once every stream was read empty at time T (its
`drained_ns`), no record committed before T can still come, so what is
stamped before T, less `margin_ns` (a record is stamped in the traced
process a moment before the kernel commits it), leaves at once. The
window is the upper bound: a stream that is never read empty (a flood)
holds nothing longer than `window_ns`. A record that still comes after a
newer one left is counted `late`, and widens the margin.

>>> out = []
>>> buffer = ReorderBuffer(out.append)
>>> for ts in (30, 10, 20):
...     buffer.push(Record(ts=ts, pid=1, tid=1, comm="a", topic="t", where="?",
...                        message=""))
>>> buffer.flush(until_ns=20)
>>> [r.ts for r in out]
[10, 20]
>>> buffer.ready_until(drained_ns=30 + buffer.margin_ns, now_ns=0)
30
>>> buffer.flush_all()
>>> [r.ts for r in out]
[10, 20, 30]
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from recorder_tracer.decode.record import Record

REORDER_WINDOW_NS = 150_000_000   # the most a record waits for older ones
# Stamp to commit: the trap commits within microseconds unless the thread is
# preempted in between; the batch harvest within its 1 ms tick.
REORDER_MARGIN_NS = 30_000_000
MIN_WAIT_MS = 5     # a poll waits at least this: no spinning on a held record


def monotonic_ns() -> int:
    """CLOCK_MONOTONIC in ns: the clock of records and of bpf_ktime_get_ns."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def oldest_mark(marks: list[int | None]) -> int | None:
    """The moment every source was read empty: the oldest of their marks
    (None if one has none yet, or there is none).

    >>> oldest_mark([30, 20]), oldest_mark([30, None]), oldest_mark([])
    (20, None, None)
    """
    if not marks or None in marks:
        return None
    return min(mark for mark in marks if mark is not None)


class ReorderBuffer:
    """Records wait in a heap (see ready_until()), then go to `sink` oldest
    first.

    Records with equal timestamps leave in the order they came. Every
    `batch` records pushed, `between_batches()` runs: a session flushes and
    checks for a stop there, because under a flood bcc's perf-buffer poll
    does not return (it reads until the buffer is empty, and producers
    refill it faster than Python reads it).
    """

    def __init__(self, sink: Callable[[Record], None],
                 window_ns: int = REORDER_WINDOW_NS,
                 between_batches: Callable[[], None] | None = None,
                 batch: int = 4096, margin_ns: int = REORDER_MARGIN_NS) -> None:
        self.sink = sink
        self.window_ns = window_ns
        self.margin_ns = min(margin_ns, window_ns)
        self.late = 0           # records that came after a newer one left
        self._last_ts = -1      # the newest timestamp emitted
        self.between_batches = between_batches
        self.batch = batch
        self._heap: list[tuple[int, int, Record]] = []
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, record: Record) -> None:
        """Hold `record` until its turn."""
        self._arrivals += 1
        if record.ts < self._last_ts:
            # Stamped longer before its commit than the margin allows:
            # leave more room from now on.
            self.late += 1
            self.margin_ns = min(self.window_ns,
                                 self.margin_ns + 2 * (self._last_ts - record.ts))
        heapq.heappush(self._heap, (record.ts, self._arrivals, record))
        if self.between_batches is not None and self._arrivals % self.batch == 0:
            self.between_batches()

    def ready_until(self, drained_ns: int | None = None,
                    now_ns: int | None = None) -> int:
        """The newest timestamp that may leave now: the margin before the
        moment every stream was last read empty (`drained_ns`; None: not
        known), and never longer ago than the window."""
        if now_ns is None:
            now_ns = monotonic_ns()
        until = now_ns - self.window_ns
        if drained_ns is not None:
            until = max(until, drained_ns - self.margin_ns)
        return until

    def wait_ms(self, timeout_ms: int, drained_known: bool = True) -> int:
        """How long a poll may wait for records: at most `timeout_ms`, and
        no longer than until the oldest record held may leave (streams
        read empty then let it go; with `drained_known` False, only the
        window lets it go)."""
        due = self.next_due_ns(drained_known)
        if due is None:
            return timeout_ms
        wait = (due - monotonic_ns()) // 1_000_000 + 1
        return max(MIN_WAIT_MS, min(timeout_ms, wait))

    def next_due_ns(self, drained_known: bool = True) -> int | None:
        """When the oldest record held may leave, if the streams are read
        empty then (None: none held)."""
        if not self._heap:
            return None
        return self._heap[0][0] + (self.margin_ns if drained_known else self.window_ns)

    def flush(self, until_ns: int | None = None) -> None:
        """Emit the records stamped at or before `until_ns` (default: the
        window before now)."""
        if until_ns is None:
            until_ns = self.ready_until()
        while self._heap and self._heap[0][0] <= until_ns:
            self._emit(heapq.heappop(self._heap)[2])

    def flush_all(self) -> None:
        """Emit everything held (at the end of a trace)."""
        while self._heap:
            self._emit(heapq.heappop(self._heap)[2])

    def _emit(self, record: Record) -> None:
        self._last_ts = max(self._last_ts, record.ts)
        self.sink(record)
