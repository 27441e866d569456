"""Run-time topics: made from Python, recorded in the C core, armed one by one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.tracer import PythonWorkload

import recorder
from recorder_tracer.target.dynamic import read_armed, runtime_topics
from recorder_tracer.target.memory import ProcessImage


def test_topic_of_the_same_name_is_the_same_ring(capfd) -> None:
    first = recorder.Recorder("dynamic_same", 16, "first")
    again = recorder.Recorder("dynamic_same", 99, "second")
    for index in range(23):
        (first if index % 2 else again).record("value %d", index)
    shown = recorder.dump("dynamic_same")
    assert shown == 16
    lines = [line for line in capfd.readouterr().err.splitlines()
             if "dynamic_same:" in line and "value" in line]
    assert [line.rsplit(" ", 1)[1] for line in lines] == [str(i) for i in range(7, 23)]
    assert "test_dynamic.py:" in lines[0]


@pytest.fixture
def workload():
    with PythonWorkload() as started:
        yield started


@pytest.mark.bpf
def test_registry_lists_python_topics_as_runtime_topics(workload) -> None:
    workload.record("py_alpha", 3)
    topics = runtime_topics(ProcessImage.of(workload.pid).topics(),
                            probe_names={"recorder_core", "recorder_signals"})
    alpha = next(topic for topic in topics if topic.name == "py_alpha")
    assert alpha.size == 64
    assert read_armed(workload.pid, alpha) is False


@pytest.mark.bpf
def test_tracer_arms_one_runtime_topic_and_sees_every_record(workload) -> None:
    from helpers.tracer import BackgroundSession

    from recorder_tracer.decode.spec import TopicSpec
    from recorder_tracer.session.loop import TraceOptions

    workload.record("py_tick", 1)      # both topics exist before arming
    workload.record("py_tock", 1)
    # The latency mode traps, through the shared probe and the armed flag.
    session = BackgroundSession(TraceOptions(pids=[workload.pid], latency=True,
                                             spec=TopicSpec.parse("py_tick")))
    image = ProcessImage.of(workload.pid)
    by_name = {topic.name: topic for topic in image.topics()}
    assert read_armed(workload.pid, by_name["py_tick"]) is True
    assert read_armed(workload.pid, by_name["py_tock"]) is False
    workload.record("py_tock", 7)
    workload.record("py_tick", 23)
    records = session.stop()

    assert [r.topic for r in records] == ["py_tick"] * 23
    assert [r.args for r in records] == [[i, "py_tick", i / 2] for i in range(23)]
    assert records[4].message == "value 4 of py_tick half 2.0"
    assert records[4].where.endswith("py_ticks.py:22")
    # py_tock never trapped; disarming clears the flag.
    assert sum(session.session.topic_counts().values()) == 23
    assert read_armed(workload.pid, by_name["py_tick"]) is False


@pytest.mark.bpf
def test_runtime_topic_made_after_arming_is_armed_by_the_rescan(workload) -> None:
    from helpers.tracer import BackgroundSession, wait_for

    from recorder_tracer.decode.spec import TopicSpec
    from recorder_tracer.session.loop import TraceOptions

    session = BackgroundSession(TraceOptions(pids=[workload.pid], latency=True,
                                             spec=TopicSpec.parse("py_late")))
    workload.record("py_late", 0)      # the topic exists from now on
    process = session.session.processes[workload.pid]
    wait_for(lambda: "py_late" in process.runtime_armed)
    workload.record("py_late", 11)
    records = session.stop()
    assert [r.args[0] for r in records] == list(range(11))


@pytest.mark.bpf
def test_a_process_that_execs_is_armed_again_in_its_new_program() -> None:
    from helpers.tracer import BackgroundSession, wait_for

    from recorder_tracer.decode.spec import TopicSpec
    from recorder_tracer.session.loop import TraceOptions

    script = Path(__file__).parent / "workloads" / "py_reexec.py"
    process = subprocess.Popen([sys.executable, str(script), "0"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdin is not None and process.stdout is not None

    def command(line: str) -> str:
        process.stdin.write(line + "\n")
        process.stdin.flush()
        return process.stdout.readline().strip()

    try:
        pid = int(process.stdout.readline().split()[2])
        session = BackgroundSession(TraceOptions(pids=[pid], latency=True,
                                                 spec=TopicSpec.parse("work")))
        assert command("record 5") == "done"
        # Decoded (delivered, past the reordering window) before the exec:
        # their formats live in the old program's heap. Received is not
        # enough: a record is decoded when it is delivered.
        wait_for(lambda: len(session.records) == 5)
        assert command("exec") == f"ready 1 {pid}"
        wait_for(lambda: any("exec'd" in report for report in session.reports))
        traced = session.session.processes[pid]
        wait_for(lambda: "work" in traced.runtime_armed)
        assert command("record 7") == "done"
        records = session.stop()
    finally:
        process.kill()
        process.wait()
    assert [r.message for r in records] == (
        [f"gen 0 record {i}" for i in range(5)]
        + [f"gen 1 record {i}" for i in range(7)])
