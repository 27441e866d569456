"""Run-time topics: made from Python, recorded in the C core, armed one by one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import recorder
from recorder_tracer.dynamic import read_armed, runtime_topics
from recorder_tracer.memory import ProcessImage

WORKLOAD = Path(__file__).parent / "workloads" / "py_ticks.py"


def test_topic_of_the_same_name_is_the_same_ring(capfd) -> None:
    first = recorder.topic("dynamic_same", 16, "first")
    again = recorder.Topic("dynamic_same", 99, "second")
    for index in range(23):
        (first if index % 2 else again).record("value %d", index)
    shown = recorder.dump("dynamic_same")
    assert shown == 16
    lines = [line for line in capfd.readouterr().err.splitlines()
             if "dynamic_same:" in line and "value" in line]
    assert [line.rsplit(" ", 1)[1] for line in lines] == [str(i) for i in range(7, 23)]
    assert "test_dynamic.py:" in lines[0]


class PythonWorkload:
    """tests/workloads/py_ticks.py, driven line by line."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKLOAD)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.pid = int(self.process.stdout.readline().split()[1])

    def record(self, topic: str, count: int) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{topic} {count}\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "done"

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
        self.process.wait(timeout=10)


@pytest.fixture
def workload():
    started = PythonWorkload()
    yield started
    started.close()


@pytest.mark.bpf
def test_registry_lists_python_topics_as_runtime_topics(workload) -> None:
    workload.record("py_alpha", 3)
    topics = runtime_topics(ProcessImage.of(workload.pid).topics(),
                            probe_names={"recorder_core", "recorder_signals"})
    alpha = next(topic for topic in topics if topic.name == "py_alpha")
    assert alpha.size == 64
    assert read_armed(workload.pid, alpha) is False
