"""Every armed topic of a process is harvested while it runs, even beside
one that floods (kernel/bpf/batch.c: a walk starts after the topic the last
one ran out in).

A walk at a switch or a tick has a fixed number of steps. When every walk
began at the process's first armed topic and that topic flooded, the walks
spent their steps there: the topics after it waited until it stopped, their
small rings wrapping meanwhile. Real process, real BPF, exact counts; the
bound is the point of giving up (scaled), the test waits on records.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers.tracer import stop_while_traced
from timing import scaled

from recorder_tracer.decode.record import Record
from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.session.loop import TraceOptions, TraceSession

pytestmark = [pytest.mark.bpf, pytest.mark.host]   # as tests/test_batch.py

SLOW = 100      # one a burst, into a ring of 64: it wraps if not harvested


def test_batch_delivers_a_slow_topic_beside_a_flooding_one_while_it_runs(
        progs: Path) -> None:
    assert 1 in os.sched_getaffinity(0), "needs CPU 1"
    program = subprocess.Popen([str(progs / "batch_flood_slow"), str(SLOW)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert program.stdin is not None and program.stdout is not None
    slow: list[Record] = []
    floods = 0

    def take(record: Record) -> None:
        nonlocal floods
        if record.topic == "slow":
            slow.append(record)
        else:
            floods += 1

    try:
        pid = int(program.stdout.readline().split()[1])
        # `flood` first: the topic every walk used to begin with.
        session = TraceSession(TraceOptions(latency=False, pids=[pid],
                                            spec=TopicSpec.parse("flood:slow")), take)
        session.start()
        program.stdin.write("go\n")
        program.stdin.flush()
        # The stream is read while the program runs: it must not fill.
        deadline = time.monotonic() + scaled(15)     # ~3.3 s of bursts
        while len(slow) < SLOW and time.monotonic() < deadline:
            session.poll(timeout_ms=20)
        arrived = len(slow)
        assert program.stdout.readline().strip() == "slow done"
        stop_while_traced(program, session)
    finally:
        if program.poll() is None:
            program.kill()
        program.wait()
    losses = session.topic_losses()
    slow_loss, flood_loss = losses[(pid, "slow")], losses[(pid, "flood")]
    assert arrived == SLOW, (
        f"{arrived} of {SLOW} slow records while it ran (lost {slow_loss.lost})")
    assert [r.args[0] for r in slow] == list(range(SLOW))
    assert (slow_loss.produced, slow_loss.streamed, slow_loss.lost) == (SLOW, SLOW, 0)
    # The flood's account is exact too: what arrived plus what was lost.
    assert flood_loss.lost > 0, "it must flood: more than the walks take"
    assert floods == flood_loss.streamed
    assert all(cpu.balanced for cpu in session.summaries())
