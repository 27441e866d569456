"""The controller copies the batch stream's BPF rings out while it decodes
(kernel/batch_stream.py `refill`: a backlog of its own), so the kernel's
rings have room again every few chunks instead of once a read. Real
process, real BPF: records copied out early are delivered once, in order,
and counted as before.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers.tracer import Workload
from timing import scaled

from recorder_tracer.decode.record import Record
from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.kernel.batch_stream import CHUNK_HEAD
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


def test_records_copied_out_early_are_delivered_once_in_order(progs: Path) -> None:
    workload = Workload(progs)
    try:
        records: list[Record] = []
        session = TraceSession(TraceOptions(latency=False, pids=[workload.pid],
                                            spec=TopicSpec.parse("flood")),
                               records.append)
        session.start()
        stream = session.recorder.stream    # type: ignore[union-attr]
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
