"""The controller records its own steps: `recorder` can debug `recorder`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.tracer import BackgroundSession, Workload, wait_for
from timing import scaled

from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.session.loop import TraceOptions

pytestmark = pytest.mark.bpf


def test_a_tracer_traces_another_tracers_own_topics(progs: Path) -> None:
    workload = Workload(progs)
    controller = subprocess.Popen(
        # --latency: its session topic tells of the sites it attaches.
        [sys.executable, "-m", "recorder_tracer.cli", "trace", "--latency", "-p",
         str(workload.pid), "tick"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert controller.stderr is not None
        wait_for(lambda: "Tracing" in controller.stderr.readline(), timeout=scaled(30))
        observer = BackgroundSession(TraceOptions(
            pids=[controller.pid], spec=TopicSpec.parse("tracer_.*")))
        controller.send_signal(signal.SIGINT)
        assert controller.wait(timeout=scaled(30)) == 0
        records = observer.stop()
    finally:
        if controller.poll() is None:
            controller.kill()
        workload.close()

    messages = [(r.topic, r.message) for r in records]
    # tick's two sites: its RECORD and its RECORDER_DEFINE site.
    assert ("tracer_session", f"disarming pid {workload.pid}: 2 sites") in messages
    detached = [m for t, m in messages if t == "tracer_arm"]
    assert len(detached) == 2
    assert detached[0].startswith("detached ")
    assert detached[0].endswith(f" in pid {workload.pid}")
    closing = [m for t, m in messages if m.startswith("closed: CPU")]
    assert len(closing) == len(os.sched_getaffinity(0)) == os.cpu_count()
    assert all(r.pid == controller.pid for r in records)
