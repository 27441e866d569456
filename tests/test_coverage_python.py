"""Coverage of Python programs: run-time topics made while the trace runs,
a program gone before any rescan, a multiprocessing pool that forks."""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.tracer import BackgroundSession, wait_for
from timing import scaled

from recorder_tracer.decode.record import Record
from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.session.loop import TraceOptions

# coverage runs where the kernel has the 6.16 exit tracepoint; the VM guest's
# 6.1 does not yet
pytestmark = [pytest.mark.bpf, pytest.mark.host]

WORKLOADS = Path(__file__).parent / "workloads"


def registry_known(session: BackgroundSession, pid: int) -> bool:
    """The kernel knows where `pid`'s recorder core is (it was found loaded)."""
    coverage = session.session.coverage
    assert coverage is not None
    watch = coverage.kernel.watch_of(pid)
    return bool(watch and watch[0])


def run_to_end(session: BackgroundSession) -> list[Record]:
    wait_for(lambda: session.session.child_status is not None
             or not session._thread.is_alive(), timeout=scaled(30))
    return session.stop()


def assert_late_records(records: list[Record]) -> None:
    """The three spans and three values py_late_spans.py makes, readable."""
    assert [record.topic for record in records] == [
        "late_span", "late_value", "late_span"] * 3
    values = [record for record in records if record.topic == "late_value"]
    assert [record.message for record in values] == [
        f"value {i} of late-{i}" for i in range(3)]
    spans = [record for record in records if record.topic == "late_span"]
    assert [record.message for record in spans[::2]] == ["begin"] * 3
    assert all(record.message.startswith("end ") for record in spans[1::2])
    assert all(record.where.endswith("py_late_spans.py:25") for record in spans)
    assert not [record for record in records if "unreadable" in record.message]


def test_topics_made_during_the_trace_by_a_program_that_exits_at_once(
        tmp_path) -> None:
    """Its topics are made after the trace started and it exits before any
    rescan could arm them: its end's copy brings them, formats included
    (they live in its heap)."""
    go = tmp_path / "go"
    session = BackgroundSession(TraceOptions(
        command=[sys.executable, str(WORKLOADS / "py_late_spans.py"), str(go)],
        spec=TopicSpec.parse("late_.*")))
    pid = session.session.tracker.child
    assert pid is not None
    wait_for(lambda: registry_known(session, pid), timeout=scaled(30))
    go.touch()
    records = run_to_end(session)
    assert_late_records(records)
    assert {record.pid for record in records} == {pid}


def test_topics_made_during_the_trace_are_armed_from_their_first_record(
        tmp_path) -> None:
    """The program lives on: the rescan arms its new topics, and what they
    recorded before is delivered then, once."""
    go, stop = tmp_path / "go", tmp_path / "stop"
    session = BackgroundSession(TraceOptions(
        command=[sys.executable, str(WORKLOADS / "py_late_spans.py"), str(go),
                 str(stop)],
        spec=TopicSpec.parse("late_.*")))
    pid = session.session.tracker.child
    assert pid is not None
    wait_for(lambda: registry_known(session, pid), timeout=scaled(30))
    go.touch()
    wait_for(lambda: len(session.records) >= 9, timeout=scaled(30))
    coverage = session.session.coverage
    # Backfilled: what the topics recorded before the rescan (every 0.5 s)
    # armed them, at least each one's first record; the rest may come live
    # if a rescan lands amid the workload's loop.
    assert coverage is not None and coverage.backfilled >= 1
    stop.touch()
    records = run_to_end(session)
    assert_late_records(records)


def test_multiprocessing_pool_workers_forked_are_traced(tmp_path) -> None:
    go = tmp_path / "go"
    program = subprocess.Popen([sys.executable, str(WORKLOADS / "py_pool.py"),
                                str(go)], stdout=subprocess.PIPE, text=True)
    try:
        assert program.stdout is not None
        pid = int(program.stdout.readline().split()[1])
        session = BackgroundSession(TraceOptions(
            pids=[pid], spec=TopicSpec.parse("pool_item")))
        go.touch()
        started = time.monotonic()
        done = program.stdout.readline().split()
        assert done[0] == "done", done
        assert program.wait(timeout=scaled(30)) == 0
        records = session.stop()
    finally:
        if program.poll() is None:
            program.kill()
            program.wait()
    workers = {int(worker) for worker in done[1:]}
    assert sorted(record.args[0] for record in records) == list(range(30)), (
        time.monotonic() - started)
    by_pid = collections.Counter(record.pid for record in records)
    assert set(by_pid) == workers and pid not in workers
    assert all(record.args[1] == record.pid for record in records)
    assert records[0].message.startswith("item ")
    assert records[0].where.endswith("py_pool.py:19")
