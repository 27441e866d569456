"""The controller copies the batch stream's BPF rings out while it decodes
(kernel/batch_stream.py `refill`: a backlog of its own), so the kernel's
rings have room again every few chunks instead of once a read. Real
process, real BPF: records copied out early are delivered once, in order,
and counted as before.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.tracer import Workload
from timing import scaled

from recorder_tracer.decode.record import Record
from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.kernel.batch_stream import CHUNK_HEAD, ENTRY_SIZE, REFILL_CHUNKS
from recorder_tracer.output.text import TextPrinter
from recorder_tracer.output.text_plans import TextPlans
from recorder_tracer.session.loop import TraceOptions, TraceSession

pytestmark = [pytest.mark.bpf, pytest.mark.host]     # as tests/test_batch.py


def backlog_entries(stream) -> int:
    """Entries the backlog holds (chunks: count less skip)."""
    total = 0
    for ring in stream._rings:      # the rings' backlogs, not yet read
        for message in ring.backlog:
            kind, _pid, _topic, count, skip = CHUNK_HEAD.unpack_from(message, 0)[:5]
            total += count - skip if kind == 1 else 0
    return total


def started_flood_session(workload: Workload, sink: Any,
                          **options: Any) -> tuple[TraceSession, Any]:
    """A started batch session of `workload`'s flood topic, and its stream."""
    session = TraceSession(TraceOptions(latency=False, pids=[workload.pid],
                                        spec=TopicSpec.parse("flood")), sink, **options)
    session.start()
    return session, session.recorder.stream     # type: ignore[union-attr]


def test_records_copied_out_early_are_delivered_once_in_order(progs: Path) -> None:
    workload = Workload(progs)
    try:
        records: list[Record] = []
        session, stream = started_flood_session(workload, records.append)
        workload.record("flood", 997)       # harvested when it leaves its CPU
        deadline = time.monotonic() + scaled(10)
        while backlog_entries(stream) < 997 and time.monotonic() < deadline:
            stream.refill()
            time.sleep(0.005)
        assert backlog_entries(stream) == 997
        assert not any(ring.pending() for ring in stream._rings)   # BPF's rings empty
        assert records == []        # copied, not delivered yet
        session.close()
    finally:
        workload.process.kill()
        workload.process.wait()
    assert [r.args[0] for r in records] == list(range(997))
    loss = session.topic_losses()[(workload.pid, "flood")]
    assert (loss.produced, loss.streamed, loss.lost) == (997, 997, 0)
    assert all(cpu.balanced for cpu in session.summaries())


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_the_cyclic_collector_is_off_while_streaming_and_runs_when_due(
        monkeypatch) -> None:
    """session/loop.py: no collection in the hot loop, one every
    GC_PERIOD_S (cycles still freed), everything as before after."""
    import gc
    import weakref

    from recorder_tracer.session import loop
    assert gc.isenabled()
    with loop.collections_paused() as collect_when_due:
        assert not gc.isenabled()
        cycle = weakref.ref(_Cycle())
        collect_when_due()                  # not due yet: the cycle stays
        assert cycle() is not None
        monkeypatch.setattr(loop, "GC_PERIOD_S", 0.0)
        with loop.collections_paused() as nested:   # already paused: a no-op
            nested()
        assert cycle() is not None
    assert gc.isenabled() and gc.get_freeze_count() == 0
    with loop.collections_paused() as collect_when_due:
        cycle = weakref.ref(_Cycle())
        collect_when_due()                  # due at once with a period of 0
        assert cycle() is None


def wait_pending(stream, entries: int) -> None:
    """Until BPF's rings hold `entries` entries' bytes, not read yet."""
    deadline = time.monotonic() + scaled(10)
    while (sum(ring.pending() for ring in stream._rings) < entries * ENTRY_SIZE
           and time.monotonic() < deadline):
        time.sleep(0.005)
    assert sum(ring.pending() for ring in stream._rings) >= entries * ENTRY_SIZE


def test_a_long_read_copies_the_rings_out_every_few_chunks(progs: Path) -> None:
    """kernel/batch_stream.py: a read of 63 chunks refills at chunk 32, and
    what it took is released when it is done."""
    workload = Workload(progs)
    try:
        records: list[Record] = []
        session, stream = started_flood_session(workload, records.append)
        workload.record("flood", 997)       # 63 chunks or more, in BPF's ring
        wait_pending(stream, 997)
        before = stream.refills
        stream.poll(timeout_ms=0)           # one read: chunks 1..63
        assert stream.refills - before >= 997 // 16 // REFILL_CHUNKS
        assert all(ring.held == 0 and not ring.backlog for ring in stream._rings)
        session.close()
    finally:
        workload.process.kill()
        workload.process.wait()
    assert [r.args[0] for r in records] == list(range(997))


def test_the_backlog_holds_at_most_its_share_and_leaves_the_rest_to_bpf(
        progs: Path) -> None:
    """decode/ring_messages.py: copied bytes and their messages' views are
    counted against the ring's share; past it BPF's ring keeps the rest,
    read later, every record once and in order."""
    workload = Workload(progs)
    try:
        records: list[Record] = []
        session, stream = started_flood_session(workload, records.append)
        for ring in stream._rings:
            ring.share = 32 << 10           # ~200 entries of 997
        workload.record("flood", 997)
        wait_pending(stream, 997)
        stream.refill()
        stream.refill()                     # no room left: copies nothing more
        assert 0 < backlog_entries(stream) < 997
        assert all(0 < ring.held <= ring.share for ring in stream._rings
                   if ring.backlog)
        assert sum(ring.pending() for ring in stream._rings) > 0   # the rest in BPF
        deadline = time.monotonic() + scaled(10)
        while len(records) < 997 and time.monotonic() < deadline:
            stream.poll(timeout_ms=0)
            assert all(ring.held <= ring.share for ring in stream._rings)
            session.reorder.flush_all()
        session.close()
    finally:
        workload.process.kill()
        workload.process.wait()
    assert [r.args[0] for r in records] == list(range(997))


def test_rendering_a_long_run_of_lines_reads_the_stream_between(progs: Path) -> None:
    """session/batch_topics.py wires ReorderBuffer.while_emitting to the
    stream's refill: a flush of 2,991 lines refills between runs of 2,048."""
    workload = Workload(progs)
    out = io.StringIO()
    printer = TextPrinter(out, header=False)
    try:
        # One CPU: a plan is per CPU, and a first entry on each leaves as a
        # Record, which would cut the lines into shorter runs.
        os.sched_setaffinity(workload.pid, {min(os.sched_getaffinity(0))})
        session, stream = started_flood_session(workload, printer.write,
                                                lines=TextPlans(printer))
        for _ in range(3):
            workload.record("flood", 997)   # harvested as it waits for the next
        wait_pending(stream, 3 * 997)
        stream.poll(timeout_ms=0)
        before = stream.refills
        session.reorder.flush_all()         # the lines rendered, in runs
        assert stream.refills - before >= 1
        session.close()
    finally:
        workload.process.kill()
        workload.process.wait()
    numbers = [int(n) for n in re.findall(r"flood (\d+)", out.getvalue())]
    assert numbers == list(range(997)) * 3


def test_a_session_run_pauses_the_collector_and_restores_it(progs: Path) -> None:
    """session/loop.py run(): no cyclic collection while it streams (with
    start() inside run(), as metrics/series.py calls it); as before after."""
    import gc
    workload = Workload(progs)
    seen: list[bool] = []
    try:
        session: TraceSession

        def sink(record: Record) -> None:
            seen.append(gc.isenabled())
            session.stop()

        session = TraceSession(TraceOptions(latency=False, pids=[workload.pid],
                                            spec=TopicSpec.parse("flood")), sink)
        assert gc.isenabled()
        frozen = gc.get_freeze_count()
        deadline = time.monotonic() + scaled(10)

        def record_until_seen() -> None:    # armed inside run(): from then on
            while not seen and time.monotonic() < deadline:
                workload.record("flood", 5)
        recorder = threading.Thread(target=record_until_seen)
        recorder.start()
        session.run()
        recorder.join()
    finally:
        workload.process.kill()
        workload.process.wait()
    assert seen and not any(seen)
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_objects_the_host_application_froze_stay_frozen() -> None:
    """collections_paused() does not thaw what it did not freeze (a pre-fork
    server using the Python API freezes its own)."""
    import gc

    from recorder_tracer.session import loop
    assert gc.isenabled()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with loop.collections_paused():
            assert not gc.isenabled()
        # Not thawed (unfreeze() empties the permanent generation); frozen
        # objects freed meanwhile (a failed test's) leave it, so not "==".
        assert gc.isenabled() and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
