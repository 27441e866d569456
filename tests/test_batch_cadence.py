"""When the batch harvest (kernel/bpf/batch.c) delivers: a shard its CPU
left behind is harvested by the process's harvests on another CPU.

A harvest at a switch or a tick takes its own CPU's shard; what it cannot
take there stays. A process that then runs only elsewhere must not keep
those records until it comes back or exits: its harvests on the other CPU
adopt the shard. Real processes, real BPF, exact counts; the bounds are
the points of giving up (scaled), the tests wait on records.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.tracer import stop_while_traced
from timing import scaled

from recorder_tracer.decode.record import Record
from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.session.loop import TraceOptions, TraceSession

pytestmark = [pytest.mark.bpf, pytest.mark.host]   # as tests/test_batch.py

LEFT = 16_384       # `moved` keeps all of them: ~8 walks' worth


def run_moved(progs: Path, argv: list[str], spec: str, expected: int,
              after_move: Callable[[TraceSession], None] = lambda _: None,
              ) -> tuple[TraceSession, list[Record], int]:
    """Runs batch_migrate under a batch session: it records on CPU 0, moves
    to CPU 1 for good. Waits (up to scaled(5) s) for `expected` records
    while it still runs there, then stops it; returns the closed session,
    the records, and its pid."""
    assert {0, 1} <= os.sched_getaffinity(0), "needs CPUs 0 and 1"
    program = subprocess.Popen([str(progs / "batch_migrate"), *argv],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert program.stdin is not None and program.stdout is not None
    records: list[Record] = []
    try:
        pid = int(program.stdout.readline().split()[1])
        session = TraceSession(TraceOptions(latency=False, pids=[pid],
                                            spec=TopicSpec.parse(spec)),
                               records.append)
        session.start()
        program.stdin.write("go\n")
        program.stdin.flush()
        assert program.stdout.readline().strip() == "moved"
        moved = time.monotonic()
        after_move(session)
        deadline = moved + scaled(5)
        while len(records) < expected and time.monotonic() < deadline:
            session.poll(timeout_ms=20)
        waited, arrived = time.monotonic() - moved, len(records)
        stop_while_traced(program, session)
    finally:
        if program.poll() is None:
            program.kill()
        program.wait()
    assert arrived == expected, (
        f"{arrived} of {expected} records in {waited:.2f} s while it ran on CPU 1")
    assert all(cpu.balanced for cpu in session.summaries())
    return session, records, pid


def test_batch_delivers_a_shard_left_behind_while_the_process_runs_elsewhere(
        progs: Path) -> None:
    # The switch away from CPU 0 takes one walk's worth (~1,900): the rest
    # used to wait in CPU 0's shard for the process's exit.
    session, records, pid = run_moved(progs, [str(LEFT)], "moved", LEFT)
    assert [r.args[0] for r in records] == list(range(LEFT))
    loss = session.topic_losses()[(pid, "moved")]
    assert (loss.produced, loss.streamed, loss.lost) == (LEFT, LEFT, 0)


def test_batch_delivers_the_first_records_of_a_topic_armed_after_its_process_moved(
        progs: Path) -> None:
    # `later` is registered and recorded into on CPU 0 before its name is
    # published (as the controller's rescan or an unreadable name's read
    # would, later): BPF arms it from its first record at its next harvest,
    # on CPU 1, where the process no longer records. Its first records are
    # all in CPU 0's shard (tests/test_batch.py's fork test in small).
    count = 300

    def publish(session: TraceSession) -> None:
        session.recorder.batch.arm_names(["later"])

    session, records, pid = run_moved(progs, [str(count), "late"], "later", count,
                                      after_move=publish)
    assert [r.args[0] for r in records] == list(range(count))
    assert session.topic_losses()[(pid, "later")].produced == count
