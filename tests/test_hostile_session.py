"""The session's own failures are loud and never skip cleanup: an arm that
raises in the follower's thread, a step of close() that raises."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.tracer import BackgroundSession, Workload, wait_for
from timing import scaled

from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.session.loop import TraceOptions


def test_failed_arm_in_follower_is_reported_and_following_goes_on(
        progs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    background = BackgroundSession(TraceOptions(comms=["workload_ticks"],
                                                spec=TopicSpec.parse("tock")))
    session = background.session
    real = session.trace_process
    failed: list[int] = []

    def fail_once(pid: int, required: bool = True) -> bool:
        # Injected: the first process to exec fails to arm (as a crafted
        # process would make an unforeseen error do).
        if not failed:
            failed.append(pid)
            raise RuntimeError("injected arm failure")
        return real(pid, required)

    monkeypatch.setattr(session, "trace_process", fail_once)
    first = Workload(progs)
    second = None
    records = None
    try:
        wait_for(lambda: any("injected arm failure" in line
                             for line in background.reports))
        assert failed == [first.pid]
        second = Workload(progs)
        wait_for(lambda: "tock" in getattr(session.processes.get(second.pid),
                                           "armed_topics", ()), timeout=scaled(10))
        second.record("tock", 3)
        records = background.stop()
        assert [r.args for r in records if r.pid == second.pid] == [[0], [1], [2]]
    finally:
        if records is None:     # failed early: a session left following
            background.stop()   # --comm would arm the next tests' programs
        first.close()
        if second is not None:
            second.close()


def test_close_clears_pins_even_when_a_step_raises(
        progs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin_dir = f"/sys/fs/bpf/recorder-hostile-{os.getpid()}"
    workload = Workload(progs)
    try:
        background = BackgroundSession(TraceOptions(pids=[workload.pid],
                                                    spec=TopicSpec.parse("tock"),
                                                    pin_dir=pin_dir))
        assert Path(pin_dir).is_dir()

        def broken_drain() -> None:
            raise RuntimeError("injected drain failure")

        monkeypatch.setattr(background.session.stream, "drain", broken_drain)
        with pytest.raises(RuntimeError, match="injected drain failure"):
            background.stop()
        assert not Path(pin_dir).exists()
    finally:
        workload.close()


@pytest.mark.bpf
def test_short_trace_ending_leaves_a_longer_ones_runtime_topic_armed() -> None:
    from helpers.tracer import PythonWorkload

    from recorder_tracer.target.dynamic import read_armed
    from recorder_tracer.target.memory import ProcessImage

    with PythonWorkload() as workload:
        workload.record("py_tick", 1)
        # The armed flag is the trap's (--latency): batch sessions never set it.
        long = BackgroundSession(TraceOptions(pids=[workload.pid], latency=True,
                                              spec=TopicSpec.parse("py_tick")))
        short = BackgroundSession(TraceOptions(pids=[workload.pid], latency=True,
                                               spec=TopicSpec.parse("py_tick")))
        topic = next(t for t in ProcessImage.of(workload.pid).topics()
                     if t.name == "py_tick")
        short.stop()
        assert read_armed(workload.pid, topic) is True
        workload.record("py_tick", 5)
        records = long.stop()
        assert [r.args[0] for r in records] == list(range(5))
        assert read_armed(workload.pid, topic) is False


def test_snapshot_of_a_reused_pid_takes_nothing_from_the_new_process(
        progs: Path) -> None:
    # A controller restarted after a crash builds the snapshot of a process
    # it remembers (an offline image); that pid now names another process
    # (workload_ticks), whose maps must not resolve the old one's formats.
    from recorder_tracer.decode.entry import RawEntry
    from recorder_tracer.postmortem.build import KnownProcess, build_snapshot
    from recorder_tracer.target.memory import ProcessImage, read_maps
    from recorder_tracer.target.procs import start_time

    workload = Workload(progs)
    try:
        executable = next(m for m in read_maps(workload.pid)
                          if m.path.endswith("/workload_ticks"))
        entry = RawEntry(1, 1, workload.pid, 0, 0, 0, 0, 0, executable.start, 0,
                         (0,) * 12)

        def message(started: int | None) -> str:
            known = KnownProcess(workload.pid, ProcessImage.offline(workload.pid, []),
                                 0, "/old/exe", {}, None, started)
            snapshot = build_snapshot(workload.pid, "old", known, [entry],
                                      source="test", records_wanted=1, time_ns=1)
            return snapshot["records"][0]["message"]

        assert message(start_time(workload.pid)).startswith("\x7fELF")  # same
        assert message(start_time(workload.pid) - 1).startswith("<unreadable format")
    finally:
        workload.close()
