"""Put records from several per-CPU streams back in timestamp order.

Each per-CPU stream is in order (a BPF ring buffer per CPU for recorder
topics, a perf buffer per CPU for USDT probes: kernel/stream.py), but the
controller reads them one after another, and with --usdt beside recorder
topics two programs' streams: a record read now may be older than one read
a moment ago. So records wait, and leave oldest first (a stable sort of
what is held at each flush: runs that came in order cost it little); one
buffer shared by every stream gives one merged output.

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

import time
from bisect import bisect_right
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from recorder_tracer.decode.record import Record

REORDER_WINDOW_NS = 150_000_000   # the most a record waits for older ones
# Stamp to commit: the trap commits within microseconds unless the thread is
# preempted in between; the batch harvest within its 1 ms tick.
REORDER_MARGIN_NS = 30_000_000
MIN_WAIT_MS = 5     # a poll waits at least this: no spinning on a held record
EMIT_RUN = 2048     # lines sent on at once when `while_emitting` is set


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


_TS = itemgetter(0)
_RENDERED = (str, tuple)    # the types of rendered lines (a Record is neither)


class ReorderBuffer:
    """Records wait (see ready_until()), then go to `sink` oldest first.

    Records with equal timestamps leave in the order they came. Every
    `batch` records pushed, `between_batches()` runs: a session flushes and
    checks for a stop there, because under a flood bcc's perf-buffer poll
    does not return (it reads until the buffer is empty, and producers
    refill it faster than Python reads it).

    Held records are (timestamp, item) pairs in a list, sorted at a flush
    (stably, by timestamp: equal ones keep their order of arrival): a
    batch source pushes its runs, already nearly sorted, with push_many(),
    at no per-record cost here. An item is a Record, or a line its source
    rendered already (a str, or a tuple for Chrome's events: decode in
    batches, output/json_plans.py), which leaves in the same order, in runs
    of (timestamp, line) pairs through the `lines` sink.
    """

    def __init__(self, sink: Callable[[Record], None],
                 window_ns: int = REORDER_WINDOW_NS,
                 between_batches: Callable[[], None] | None = None,
                 batch: int = 4096, margin_ns: int = REORDER_MARGIN_NS,
                 lines: Callable[[list[tuple[int, Any]]], None] | None = None
                 ) -> None:
        self.sink = sink
        self.lines = lines
        self.window_ns = window_ns
        self.margin_ns = min(margin_ns, window_ns)
        self.late = 0           # records that came after a newer one left
        self._last_ts = -1      # the newest timestamp emitted
        self.between_batches = between_batches
        self.batch = batch
        # What the last flush left, sorted; and what came since, in order
        # of arrival: each flush sorts only the new (a record is sorted once
        # at its arrival, not at every flush while it waits), and merges by
        # a full sort only when they reach back before the newest kept.
        self._held: list[tuple[int, Any]] = []
        self._fresh: list[tuple[int, Any]] = []
        self._oldest: int | None = None     # the oldest timestamp held
        self._arrivals = 0
        # The newest timestamp pushed that may be a Record's: a run of
        # lines all newer leaves whole, without a look at each item.
        self._records_until = -1
        # Called between runs of EMIT_RUN lines sent on: rendering a long
        # run (JSON's ~2 us a line) must not keep a source's stream unread.
        self.while_emitting: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._held) + len(self._fresh)

    def push(self, record: Record) -> None:
        """Hold `record` until its turn."""
        self.push_many([(record.ts, record)])

    def push_many(self, items: list[tuple[int, Any]]) -> None:
        """Hold each (timestamp, record or rendered line) of `items`, in
        this order of arrival."""
        if not items:
            return
        self._records_until = max(self._records_until, max(map(_TS, items)))
        self.push_lines(items)

    def push_lines(self, items: list[tuple[int, Any]]) -> None:
        """push_many() for (timestamp, rendered line) pairs only."""
        if not items:
            return
        oldest = min(map(_TS, items))
        if oldest < self._last_ts:
            for ts, _item in items:
                if ts < self._last_ts:
                    # Stamped longer before its commit than the margin
                    # allows: leave more room from now on.
                    self.late += 1
                    self.margin_ns = min(self.window_ns,
                                         self.margin_ns + 2 * (self._last_ts - ts))
        self._fresh.extend(items)
        if self._oldest is None or oldest < self._oldest:
            self._oldest = oldest
        before = self._arrivals
        self._arrivals += len(items)
        if (self.between_batches is not None
                and self._arrivals // self.batch != before // self.batch):
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
        if self._oldest is None:
            return None
        return self._oldest + (self.margin_ns if drained_known else self.window_ns)

    def flush(self, until_ns: int | None = None) -> None:
        """Emit the records stamped at or before `until_ns` (default: the
        window before now)."""
        if until_ns is None:
            until_ns = self.ready_until()
        if self._oldest is None or self._oldest > until_ns:
            return
        held = self._merged()
        cut = bisect_right(held, until_ns, key=_TS)
        ready = held[:cut]
        del held[:cut]
        self._oldest = held[0][0] if held else None
        self._emit(ready)

    def flush_all(self) -> None:
        """Emit everything held (at the end of a trace)."""
        held = self._merged()
        self._held = []
        self._oldest = None
        self._emit(held)

    def _merged(self) -> list[tuple[int, Any]]:
        """Everything held, sorted stably by timestamp (equal ones in their
        order of arrival)."""
        held, fresh = self._held, self._fresh
        if fresh:
            self._fresh = []
            fresh.sort(key=_TS)
            if held and fresh[0][0] < held[-1][0]:
                held.extend(fresh)
                held.sort(key=_TS)      # stable: the kept ones came first
            else:
                held.extend(fresh)
        return held

    def _emit(self, ready: list[tuple[int, Any]]) -> None:
        """Send `ready` (sorted) on: runs of lines in one call."""
        if not ready:
            return
        self._last_ts = max(self._last_ts, ready[-1][0])
        if ready[0][0] > self._records_until:
            self._send_lines(ready)     # lines only: no Record is as new
            return
        lines: list[tuple[int, Any]] = []
        for pair in ready:
            item = pair[1]
            if type(item) in _RENDERED:
                lines.append(pair)
                continue
            if lines:
                self._send_lines(lines)
                lines = []
            self.sink(item)
        if lines:
            self._send_lines(lines)

    def _send_lines(self, lines: list[tuple[int, Any]]) -> None:
        assert self.lines is not None, "a rendered line needs a lines sink"
        if self.while_emitting is None or len(lines) <= EMIT_RUN:
            self.lines(lines)
            return
        for start in range(0, len(lines), EMIT_RUN):
            self.lines(lines[start:start + EMIT_RUN])
            self.while_emitting()
