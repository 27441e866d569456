"""Records made before a traced process exec'd are decoded with the
program that made them, not with the one it became.

The follower's thread handles the EXEC at once and arms the new program
under the same pid (the batch harvest: at its next rescan); the loop
decodes what the old one left in the stream later. Decoded with the new
image, an old format address reads the new program's memory (another
string, or none): the old records showed garbage or "unreadable".
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from helpers.tracer import Workload, wait_for
from timing import scaled

from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.session.loop import TraceOptions, TraceSession
from recorder_tracer.session.tracker import ProcessTracker
from recorder_tracer.target.memory import ProcessImage, read_maps

pytestmark = pytest.mark.bpf


@pytest.mark.parametrize("latency", [True, False], ids=["trap", "batch"])
def test_records_before_an_exec_are_decoded_with_the_program_that_made_them(
        progs: Path, latency: bool) -> None:
    workload = Workload(progs)
    records: list = []
    session = TraceSession(TraceOptions(pids=[workload.pid], latency=latency,
                                        spec=TopicSpec.parse("tick")),
                           records.append, lambda message: None)
    session.start()
    assert session.options.batch is not latency
    try:
        before = session.recorder.processes[workload.pid]
        workload.record("tick", 3)          # in the stream, not decoded yet
        stdin, stdout = workload.process.stdin, workload.process.stdout
        stdin.write(f"exec {progs / 'tracer_wait'}\n")
        stdin.flush()
        assert stdout.readline().strip() == "ready"     # tracer_wait's
        # The new program armed under the same pid (by the follower; in
        # batch mode by the rescan, here before the stream is read, as when
        # its records wait below the stream's wakeup threshold).
        def armed_again() -> bool:
            session.recorder.rescan()
            return session.recorder.processes.get(workload.pid) not in (None, before)
        wait_for(armed_again)
        deadline = time.monotonic() + scaled(10)
        while len([r for r in records if r.topic == "tick"]) < 3:
            assert time.monotonic() < deadline, records
            session.poll(timeout_ms=20)
    finally:
        session.close()
        workload.process.stdin.close()
        workload.process.wait(timeout=scaled(10))
    assert [r.message for r in records if r.pid == workload.pid] == [
        f"tick {i} of tick-string half {i * 0.5:.1f}" for i in range(3)]


# Copies at exit are coverage's: where the kernel has the 6.16 exit
# tracepoint (the VM guest's 6.1 follows through the proc connector, and a
# short_job ending before it is armed is not copied there).
@pytest.mark.host
def test_a_copy_of_the_program_it_execd_leaves_the_old_image_alone(
        progs: Path) -> None:
    """The old program exec's short_job, which records and ends before it
    can be armed: coverage copies its records at its end. Its texts are
    not cached in the old program's image (the one its records still in
    the stream decode with), where they would stand at addresses of the
    old program's memory."""
    for _attempt in range(5):       # short_job armed in time: no copy
        workload = Workload(progs)
        records: list = []
        session = TraceSession(TraceOptions(pids=[workload.pid],
                                            spec=TopicSpec.parse("tick:job")),
                               records.append, lambda message: None)
        session.start()
        try:
            workload.record("tick", 3)
            old = session.recorder.processes[workload.pid]
            stdin = workload.process.stdin
            stdin.write(f"exec {progs / 'short_job'}\n")
            stdin.flush()
            workload.process.wait(timeout=scaled(10))
            deadline = time.monotonic() + scaled(10)
            while len([r for r in records if r.topic == "job"]) < 10:
                assert time.monotonic() < deadline, records
                session.poll(timeout_ms=20)
            coverage = session.coverage
            copied = coverage is not None and coverage.copied > 0
        finally:
            session.close()
        assert [r.message for r in records if r.topic == "tick"] == [
            f"tick {i} of tick-string half {i * 0.5:.1f}" for i in range(3)]
        assert [r.message for r in records if r.topic == "job"] == [
            f"job 0 record {i}" for i in range(10)]
        if copied:
            cached = set(old.image._strings.values())
            assert not any(text and text.startswith("job ") for text in cached)
            return
    pytest.fail("short_job was armed before its end in 5 of 5 runs")


def test_a_rescan_before_the_exec_is_handled_keeps_the_old_maps(
        progs: Path) -> None:
    """A rescan may read the maps of a process that exec'd before its EXEC
    is handled: the old image keeps its own (its records still in the
    stream decode with them), and takes later maps of the same program."""
    workload = Workload(progs)
    try:
        image = ProcessImage.of(workload.pid)
        old = list(image.mappings)
        assert image.refresh_maps(read_maps(workload.pid))
        stdin, stdout = workload.process.stdin, workload.process.stdout
        stdin.write(f"exec {progs / 'tracer_wait'}\n")
        stdin.flush()
        assert stdout.readline().strip() == "ready"     # tracer_wait's
        assert not image.refresh_maps(read_maps(workload.pid))
        assert image.mappings == old
        image.close()
    finally:
        workload.process.stdin.close()
        workload.process.wait(timeout=scaled(10))


def test_the_commands_exec_event_after_its_reap_is_still_the_commands() -> None:
    """The follower thread can read the -c command's EXEC after the loop has
    reaped it (a busy machine). Taken for another process's new program,
    it disarmed the command before its exit was reported: `trace -c
    script.sh` then said nothing of how it ended (1 host run in 10)."""
    lock = threading.RLock()
    traced: set[int] = set()
    execs: list[tuple[int, bool, int]] = []
    tracker = ProcessTracker(TraceOptions(command=["sh"]), lock,
                             traced=lambda: set(traced),
                             trace=lambda pid: False,
                             on_exec=lambda *event: execs.append(event),
                             report=lambda message: None)
    pid = tracker.start_command(["sh", "-c", "exit 7"], traced.add)
    exits: list = []
    wait_for(lambda: exits.extend(tracker.exits()) or exits, scaled(10))
    assert [(exited, status) for exited, status, _ in exits] == [(pid, "exit code 7")]
    tracker._on_exec(pid, 1)           # its EXEC, read late
    assert execs == [(pid, True, 1)]
