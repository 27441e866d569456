"""Records leave the reorder buffer (decode/reorder.py) in timestamp order,
as soon as nothing older can still come: once every stream was read empty
after them (less a margin), not a fixed window later.

The first tests drive the buffer with made-up records; the last traces two
real processes with real BPF and times when each record reaches the sink.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import pytest
from helpers.tracer import Workload, wait_for
from timing import scaled

from recorder_tracer.decode.record import Record
from recorder_tracer.decode.reorder import (
    EMIT_RUN,
    REORDER_MARGIN_NS,
    REORDER_WINDOW_NS,
    ReorderBuffer,
    monotonic_ns,
)
from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.session.loop import TraceOptions, TraceSession


def record(ts: int) -> Record:
    return Record(ts=ts, pid=1, tid=1, comm="a", topic="t", where="?", message="")


def test_records_older_than_the_drained_moment_less_the_margin_leave_at_once(
        ) -> None:
    out: list[Record] = []
    buffer = ReorderBuffer(out.append)
    now = 10 * REORDER_WINDOW_NS
    for ts in (now - 5, now - REORDER_MARGIN_NS, now - REORDER_MARGIN_NS - 1):
        buffer.push(record(ts))
    buffer.flush(until_ns=buffer.ready_until(drained_ns=now, now_ns=now))
    assert [r.ts for r in out] == [now - REORDER_MARGIN_NS - 1, now - REORDER_MARGIN_NS]
    assert buffer.next_due_ns() == now - 5 + REORDER_MARGIN_NS


def test_without_a_drained_moment_the_window_bounds_the_wait() -> None:
    buffer = ReorderBuffer(lambda r: None)
    now = 10 * REORDER_WINDOW_NS
    assert buffer.ready_until(None, now_ns=now) == now - REORDER_WINDOW_NS
    # A stream read empty long ago holds nothing longer than the window.
    assert buffer.ready_until(now - 2 * REORDER_WINDOW_NS,
                              now_ns=now) == now - REORDER_WINDOW_NS


def test_a_record_older_than_one_emitted_is_counted_late_and_widens_the_margin(
        ) -> None:
    out: list[Record] = []
    buffer = ReorderBuffer(out.append, margin_ns=1_000)
    buffer.push(record(5_000))
    buffer.flush(until_ns=5_000)
    buffer.push(record(4_000))
    assert buffer.late == 1
    assert buffer.margin_ns == 1_000 + 2 * 1_000
    buffer.push(record(6_000))
    assert buffer.late == 1


def test_a_long_run_of_lines_leaves_in_runs_with_the_streams_read_between(
        ) -> None:
    """A flush that renders many lines calls `while_emitting` (a batch
    source copies its BPF rings out there) between runs of EMIT_RUN, and
    the lines leave as one run would: all, in timestamp order."""
    runs: list[list[tuple[int, str]]] = []
    between: list[int] = []
    buffer = ReorderBuffer(lambda record: None, lines=runs.append)
    buffer.while_emitting = lambda: between.append(len(runs))
    count = 2 * EMIT_RUN + 5
    buffer.push_lines([(ts, f"line {ts}") for ts in range(count, 0, -1)])
    buffer.flush_all()
    assert [len(run) for run in runs] == [EMIT_RUN, EMIT_RUN, 5]
    assert between == [1, 2, 3]
    assert [ts for run in runs for ts, _ in run] == list(range(1, count + 1))


@pytest.mark.bpf
def test_records_of_two_processes_leave_in_timestamp_order_and_promptly(
        progs: Path) -> None:
    first, second = Workload(progs), Workload(progs)
    emitted: list[tuple[Record, int]] = []
    session = TraceSession(TraceOptions(pids=[first.pid, second.pid],
                                        spec=TopicSpec.parse("tick")),
                           lambda r: emitted.append((r, monotonic_ns())))
    stopping = threading.Event()

    def loop() -> None:
        while not stopping.is_set() and session.poll(timeout_ms=50):
            pass

    session.start()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        for _ in range(4):
            first.record("tick", 10)
            second.record("tick", 10)
            time.sleep(0.01)    # apart in time: a record may wait for the other's
        # Out while the session runs, not at its close (which drains all).
        wait_for(lambda: len(emitted) == 80)
    finally:
        stopping.set()
        thread.join(timeout=scaled(10))
        session.close()
        first.close()
        second.close()
    stamps = [r.ts for r, _ in emitted]
    assert stamps == sorted(stamps)
    assert {r.pid for r, _ in emitted} == {first.pid, second.pid}
    assert session.reorder.late == 0
    # A fixed window held each record REORDER_WINDOW_NS (150 ms) at least;
    # read empty, the streams let them go after about the margin.
    delays = [when - r.ts for r, when in emitted]
    assert statistics.median(delays) < scaled(0.1) * 1e9, delays
