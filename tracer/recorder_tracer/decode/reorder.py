"""Put records from several per-CPU streams back in timestamp order.

Each per-CPU stream is in order (a BPF ring buffer per CPU for recorder
topics, a perf buffer per CPU for USDT probes: kernel/stream.py), but the
controller reads them one after another, and with --usdt beside recorder
topics two programs' streams: a record read now may be older than one read
a moment ago. So
records wait in a heap for a short window and leave oldest first; one
buffer shared by every stream gives one merged output.

>>> out = []
>>> buffer = ReorderBuffer(out.append)
>>> for ts in (30, 10, 20):
...     buffer.push(Record(ts=ts, pid=1, tid=1, comm="a", topic="t", where="?",
...                        message=""))
>>> buffer.flush(until_ns=20)
>>> [r.ts for r in out]
[10, 20]
>>> buffer.flush_all()
>>> [r.ts for r in out]
[10, 20, 30]
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from recorder_tracer.decode.record import Record

REORDER_WINDOW_NS = 150_000_000


def monotonic_ns() -> int:
    """CLOCK_MONOTONIC in ns: the clock of records and of bpf_ktime_get_ns."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class ReorderBuffer:
    """Records wait `window_ns` in a heap, then go to `sink` oldest first.

    Records with equal timestamps leave in the order they came. Every
    `batch` records pushed, `between_batches()` runs: a session flushes and
    checks for a stop there, because under a flood bcc's perf-buffer poll
    does not return (it reads until the buffer is empty, and producers
    refill it faster than Python reads it).
    """

    def __init__(self, sink: Callable[[Record], None],
                 window_ns: int = REORDER_WINDOW_NS,
                 between_batches: Callable[[], None] | None = None,
                 batch: int = 4096) -> None:
        self.sink = sink
        self.window_ns = window_ns
        self.between_batches = between_batches
        self.batch = batch
        self._heap: list[tuple[int, int, Record]] = []
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, record: Record) -> None:
        """Hold `record` until its turn."""
        self._arrivals += 1
        heapq.heappush(self._heap, (record.ts, self._arrivals, record))
        if self.between_batches is not None and self._arrivals % self.batch == 0:
            self.between_batches()

    def flush(self, until_ns: int | None = None) -> None:
        """Emit the records stamped at or before `until_ns` (default: the
        window before now)."""
        if until_ns is None:
            until_ns = monotonic_ns() - self.window_ns
        while self._heap and self._heap[0][0] <= until_ns:
            self.sink(heapq.heappop(self._heap)[2])

    def flush_all(self) -> None:
        """Emit everything held (at the end of a trace)."""
        while self._heap:
            self.sink(heapq.heappop(self._heap)[2])
