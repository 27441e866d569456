"""The batch harvest (tracer/bpf/batch.c): armed topics read from the
processes' own rings, in batches, by sequence number.

Real processes, real BPF. Every count is exact: what a process made while
armed is either received or counted lost (overwritten in its ring before a
harvest got there), per CPU and per (pid, topic). No fixed time bound: the
tests wait on the programs' own lines ("done", "recorded") and on the
session's close, which harvests what is left.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers.tracer import PythonWorkload, Workload
from timing import scaled

from recorder_tracer.decode.record import Record
from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.session.loop import TraceOptions, TraceSession

# The batch harvest is opt-in (--batch) until it is proven on the VM guest's
# 6.1 kernel (its exit path there is sys_enter exit_group): host only for now.
pytestmark = [pytest.mark.bpf, pytest.mark.host]


def batch_session(records: list[Record], **options) -> TraceSession:
    session = TraceSession(TraceOptions(latency=False, **options), records.append)
    assert session.recorder is not None and hasattr(session.recorder, "batch"), (
        "latency=False takes the batch harvest")
    session.start()
    return session


def assert_balanced(session: TraceSession) -> None:
    summaries = session.summaries()
    assert all(cpu.balanced for cpu in summaries), summaries


def test_batch_delivers_every_record_of_one_thread(workloads) -> None:
    workload = workloads()
    records: list[Record] = []
    session = batch_session(records, pids=[workload.pid],
                            spec=TopicSpec.parse("tick:flood"))
    workload.record("tick", 23)
    workload.record("flood", 997)
    session.close()
    ticks = [r for r in records if r.topic == "tick"]
    floods = [r for r in records if r.topic == "flood"]
    assert [r.args[0] for r in ticks] == list(range(23))
    assert [r.args[0] for r in floods] == list(range(997))
    losses = session.topic_losses()
    assert losses[(workload.pid, "tick")].produced == 23
    assert losses[(workload.pid, "flood")].lost == 0
    assert_balanced(session)


def test_batch_leaves_an_unarmed_topic_alone(workloads) -> None:
    workload = workloads()
    records: list[Record] = []
    session = batch_session(records, pids=[workload.pid], spec=TopicSpec.parse("tick"))
    workload.record("tock", 11)
    workload.record("tick", 2)
    session.close()
    assert [r.topic for r in records] == ["tick", "tick"]
    assert set(session.topic_losses()) == {(workload.pid, "tick")}


def test_batch_reads_string_arguments_at_harvest(workloads) -> None:
    workload = workloads()
    records: list[Record] = []
    session = batch_session(records, pids=[workload.pid], spec=TopicSpec.parse("tick"))
    workload.record("tick", 41)
    session.close()
    assert [r.args for r in records] == [[i, "tick-string", i * 0.5] for i in range(41)]
    assert all(r.message == f"tick {i} of tick-string half {i * 0.5:.1f}"
               for i, r in enumerate(records))


def test_batch_counts_loss_exactly_when_a_small_ring_wraps(workloads) -> None:
    workload = workloads()
    # On one CPU: moved mid-burst, it would fill two shards, each keeping
    # its own newest (1 run in 4 on a loaded machine).
    os.sched_setaffinity(workload.pid, {min(os.sched_getaffinity(0))})
    records: list[Record] = []
    session = batch_session(records, pids=[workload.pid], spec=TopicSpec.parse("tick"))
    workload.record("tick", 1009)      # tick keeps 64 a CPU: most are overwritten
    session.close()
    loss = session.topic_losses()[(workload.pid, "tick")]
    assert loss.produced == 1009
    assert loss.streamed == len(records)
    assert loss.overwritten == 1009 - len(records) > 0
    # What arrived is the newest, in order: the ring's last records.
    received = [r.args[0] for r in records]
    assert received == list(range(1009 - len(records), 1009))
    assert_balanced(session)


def test_batch_harvests_a_process_at_its_exit(workloads) -> None:
    workload = workloads()
    records: list[Record] = []
    session = batch_session(records, pids=[workload.pid], spec=TopicSpec.parse("flood"))
    assert workload.process.stdin is not None
    # Both lines at once: it floods and exits without waiting in between,
    # so the harvest at its exit is the one that finds the records.
    workload.process.stdin.write("flood 613\nexit\n")
    workload.process.stdin.flush()
    assert workload.process.wait(timeout=scaled(30)) == 0
    session.close()
    assert [r.args[0] for r in records] == list(range(613))
    assert session.topic_losses()[(workload.pid, "flood")].produced == 613
    assert_balanced(session)


def test_batch_exit_harvest_counts_a_shard_after_a_full_one(progs: Path) -> None:
    # On CPU 1 it fills that CPU's stream (nothing reads it before close()),
    # so its last records stay in its CPU-1 shard; moved to CPU 0, it fills
    # its CPU-0 shard (1,024 entries: 64 chunks) and exits at once. The
    # harvest at its exit copies shard 0 into CPU 0's empty stream, then
    # must still reach shard 1: a walk that spent its steps on shard 0 used
    # to end there, shard 1's records counted nowhere (produced short).
    workload = Workload(progs, command=["taskset", "-c", "1",
                                        str(progs / "workload_ticks")])
    try:
        records: list[Record] = []
        session = batch_session(records, pids=[workload.pid],
                                spec=TopicSpec.parse("flood"))
        for _ in range(12):         # ~14,000 entries: more than 1 MiB of stream
            workload.record("flood", 1000)
        workload.record("flood", 500)
        os.sched_setaffinity(workload.pid, {0})
        assert workload.process.stdin is not None
        workload.process.stdin.write("flood 1024\nexit\n")
        workload.process.stdin.flush()
        assert workload.process.wait(timeout=scaled(30)) == 0
        session.close()
    finally:
        if workload.process.poll() is None:
            workload.process.kill()
            workload.process.wait()
    loss = session.topic_losses()[(workload.pid, "flood")]
    assert loss.produced == 12 * 1000 + 500 + 1024
    assert loss.streamed == len(records)
    assert_balanced(session)


def test_batch_harvests_a_command_from_its_first_record(progs: Path) -> None:
    records: list[Record] = []
    session = TraceSession(
        TraceOptions(command=[str(progs / "workload_burst"), "23", "3"],
                     spec=TopicSpec.parse("burst"), latency=False), records.append)
    session.run()
    assert [r.message for r in records] == [f"burst {i} of 23" for i in range(23)]
    assert os.WEXITSTATUS(session.child_status or 0) == 3


def test_batch_arms_every_topic_of_a_command_with_more_than_one_look_covers(
        progs: Path) -> None:
    """BPF discovery looks at 16 topics a harvest: a command with 30 gets
    them all armed within a few looks, each resuming where the last one
    stopped, and every record is received and counted."""
    topics, count = 30, 3
    records: list[Record] = []
    session = TraceSession(
        TraceOptions(command=[str(progs / "batch_many_topics"), str(count)],
                     spec=TopicSpec.parse("many.*:-many3."), latency=False),
        records.append)
    session.run()
    assert os.WEXITSTATUS(session.child_status or 0) == 0
    assert session.recorder.capped_processes == 0
    names = sorted(f"many{t}" for t in range(topics))
    received = sorted(r.message for r in records)
    assert received == sorted(f"{name} {j}" for name in names for j in range(count))
    losses = session.topic_losses()
    assert sorted(topic for _, topic in losses) == names
    assert all(loss.produced == count and loss.lost == 0 and loss.streamed == count
               for loss in losses.values()), losses
    assert_balanced(session)


def test_batch_says_a_process_had_more_topics_armed_than_it_harvests(
        progs: Path) -> None:
    """batch.c arms 32 topics a process: a command with 40 armed has 32 of
    them harvested, every record of those counted, and the cap counted
    once for the process (recorder trace says so at its end)."""
    count = 3
    records: list[Record] = []
    session = TraceSession(
        TraceOptions(command=[str(progs / "batch_many_topics"), str(count)],
                     spec=TopicSpec.parse("many.*"), latency=False), records.append)
    session.run()
    assert os.WEXITSTATUS(session.child_status or 0) == 0
    armed = {topic for _, topic in session.topic_losses()}
    assert len(armed) == 32
    assert sorted(r.message for r in records) == sorted(
        f"{name} {j}" for name in armed for j in range(count))
    assert session.recorder.capped_processes == 1
    assert_balanced(session)

def test_batch_harvests_a_process_that_faults(progs: Path) -> None:
    victim = subprocess.Popen([str(progs / "snapshot_victim"), "victim", "3001"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    assert victim.stdout is not None and victim.stdin is not None
    pid = int(victim.stdout.readline().split()[1])
    records: list[Record] = []
    session = batch_session(records, pids=[pid], spec=TopicSpec.parse("victim"))
    victim.stdin.write("go\n")
    victim.stdin.flush()
    assert victim.stdout.readline().strip() == "recorded"
    victim.stdin.write("segv\n")
    victim.stdin.flush()
    assert victim.wait(timeout=scaled(30)) == -11
    session.close()
    loss = session.topic_losses()[(pid, "victim")]
    assert loss.produced == 3001
    assert loss.streamed == len(records) >= 1024    # its ring keeps 1024
    # The last records before the fault are all there, in order.
    assert [r.args[0] for r in records[-1024:]] == list(range(3001 - 1024, 3001))
    assert_balanced(session)


def test_batch_counts_threads_on_both_cpus_exactly(progs: Path) -> None:
    threads, count = 2, 200_003
    program = subprocess.Popen([str(progs / "batch_threads"), str(threads), str(count)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert program.stdout is not None and program.stdin is not None
    try:
        pid = int(program.stdout.readline().split()[1])
        records: list[Record] = []
        session = batch_session(records, pids=[pid], spec=TopicSpec.parse("spin"))
        program.stdin.write("go\n")
        program.stdin.flush()
        assert program.stdout.readline().strip() == "done"
        session.close()
    finally:
        program.kill()
        program.wait()
    loss = session.topic_losses()[(pid, "spin")]
    assert loss.produced == threads * count
    assert loss.streamed == len(records) > 0
    assert_balanced(session)
    assert sum(cpu.produced for cpu in session.summaries()) == threads * count
    # Each thread's records arrive in the order it made them.
    for thread in range(threads):
        mine = [r.args[1] for r in records if r.args[0] == thread]
        assert mine == sorted(mine)


def test_batch_orders_records_by_time_across_processes(workloads) -> None:
    first, second = workloads(), workloads()
    records: list[Record] = []
    session = batch_session(records, pids=[first.pid, second.pid],
                            spec=TopicSpec.parse("tock"))
    first.record("tock", 5)
    second.record("tock", 5)
    first.record("tock", 5)
    session.close()
    assert [(r.pid, r.args[0]) for r in records] == (
        [(first.pid, i) for i in range(5)] + [(second.pid, i) for i in range(5)]
        + [(first.pid, i) for i in range(5)])
    assert [r.ts for r in records] == sorted(r.ts for r in records)


def test_batch_delivers_a_python_topic_made_after_arming_from_its_first_record(
        ) -> None:
    with PythonWorkload() as workload:
        records: list[Record] = []
        session = batch_session(records, pids=[workload.pid],
                                spec=TopicSpec.parse("py_batch"))
        # Made, and recorded into, before the controller knows its name:
        # BPF arms it by name once the rescan publishes it, and harvests
        # from its first record.
        workload.record("py_batch", 13)
        deadline_polls = int(scaled(4) / 0.02)
        for _ in range(deadline_polls):
            session.poll(timeout_ms=20)
            if len(records) == 13:
                break
        workload.record("py_batch", 4)
        session.close()
    assert [r.args[0] for r in records] == [*range(13), *range(4)]
    assert all(r.args[1] == "py_batch" for r in records)
    assert records[0].where.endswith("py_ticks.py:22")
    assert session.topic_losses()[(workload.pid, "py_batch")].produced == 17


def test_capture_file_renders_every_record_later(progs: Path, tmp_path: Path) -> None:
    import json
    import sys

    capture = tmp_path / "burst.cap"
    recorder = [sys.executable, "-m", "recorder_tracer.cli"]
    traced = subprocess.run(
        [*recorder, "trace", "--no-snapshots", "-w", str(capture), "-c",
         f"{progs / 'workload_burst'} 23", "burst"],
        capture_output=True, text=True, timeout=scaled(120))
    assert traced.returncode == 0, traced.stderr
    assert "23 received, 0 lost" in traced.stderr
    shown = subprocess.run([*recorder, "show", str(capture), "--json"],
                           capture_output=True, text=True, timeout=scaled(60))
    assert shown.returncode == 0, shown.stderr
    records = [json.loads(line) for line in shown.stdout.splitlines()]
    records = [r for r in records if r["type"] == "record"]
    assert [r["message"] for r in records] == [f"burst {i} of 23" for i in range(23)]
    assert all(r["where"].endswith("workload_burst.c:17") for r in records)
    refused = subprocess.run([*recorder, "trace", "-w", str(capture), "--json",
                              "-p", "1"], capture_output=True, text=True,
                             timeout=scaled(60))
    assert refused.returncode != 0
    assert "-w takes recorder topics in batches only" in refused.stderr
