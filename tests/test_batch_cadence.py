"""When the batch harvest (kernel/bpf/batch.c) delivers: a shard its CPU
left behind is harvested by the process's harvests on another CPU.

A harvest at a switch or a tick takes its own CPU's shard; what it cannot
take in one walk stays there. A process that then runs only elsewhere must
not keep those records until it comes back or exits: its harvests on the
other CPU adopt the shard. Real processes, real BPF, exact counts; the
bounds are the points of giving up (scaled), the tests wait on records.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from timing import scaled

from recorder_tracer.decode.record import Record
from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.session.loop import TraceOptions, TraceSession

pytestmark = [pytest.mark.bpf, pytest.mark.host]   # as tests/test_batch.py

LEFT = 16_384       # batch_migrate's ring per CPU: all kept, ~8 walks' worth


def test_batch_delivers_a_shard_left_behind_while_the_process_runs_elsewhere(
        progs: Path) -> None:
    assert {0, 1} <= os.sched_getaffinity(0), "needs CPUs 0 and 1"
    program = subprocess.Popen([str(progs / "batch_migrate"), str(LEFT)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert program.stdin is not None and program.stdout is not None
    records: list[Record] = []
    try:
        pid = int(program.stdout.readline().split()[1])
        session = TraceSession(TraceOptions(latency=False, pids=[pid],
                                            spec=TopicSpec.parse("moved")),
                               records.append)
        session.start()
        program.stdin.write("go\n")
        program.stdin.flush()
        assert program.stdout.readline().strip() == "moved"
        moved = time.monotonic()
        # It now wakes every ms on CPU 1 only: shard 0 holds what the
        # switch away from CPU 0 could not take in one walk.
        deadline = moved + scaled(5)
        while len(records) < LEFT and time.monotonic() < deadline:
            session.poll(timeout_ms=20)
        waited = time.monotonic() - moved
        arrived = len(records)
        assert program.poll() is None, "it must still run: no exit harvest"
        program.stdin.write("stop\n")
        program.stdin.flush()
        assert program.stdout.readline().strip() == "done"
        assert program.wait(timeout=scaled(10)) == 0
        session.close()
    finally:
        if program.poll() is None:
            program.kill()
        program.wait()
    assert arrived == LEFT, (
        f"{arrived} of {LEFT} records in {waited:.2f} s while it ran on CPU 1")
    assert [r.args[0] for r in records] == list(range(LEFT))
    loss = session.topic_losses()[(pid, "moved")]
    assert (loss.produced, loss.streamed, loss.lost) == (LEFT, LEFT, 0)
    assert all(cpu.balanced for cpu in session.summaries())
