"""recorder top, for real: in a tmux pane, keys sent, screen read."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers.tracer import Workload, wait_for
from timing import scaled

pytestmark = pytest.mark.bpf


def tmux(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", *args], capture_output=True, text=True,
                          timeout=scaled(10))


def screen(name: str) -> str:
    return tmux("capture-pane", "-p", "-t", name).stdout


def test_top_shows_rows_sorts_with_arrows_and_quits_with_q(progs: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: run vagrant/provision.sh")
    workload = Workload(progs)
    name = f"recorder-top-{uuid.uuid4().hex[:8]}"
    # The pane's terminal size set outright: under load, tmux may not have
    # sized a new detached pane's pty yet when top first reads it (80 wide).
    command = (f"stty cols 200 rows 40; exec {sys.executable} -m recorder_tracer.cli "
               f"top -p {workload.pid} --interval 0.2 tick tock")
    assert tmux("new-session", "-d", "-s", name, "-x", "200", "-y", "40",
                command).returncode == 0
    try:
        wait_for(lambda: "sorted by rate" in screen(name), scaled(30))
        workload.record("tick", 23)
        workload.record("tock", 7)

        def row(topic: str) -> list[str]:
            for line in screen(name).splitlines():
                if line.split()[:1] == [topic]:
                    return line.split()
            return []
        try:
            wait_for(lambda: row("tick")[3:4] == ["23"] and row("tock")[3:4] == ["7"])
        except AssertionError:
            raise AssertionError(f"screen:\n{screen(name)}") from None
        assert "0..32" in " ".join(row("tick"))       # its value histogram

        tmux("send-keys", "-t", name, "Right")
        wait_for(lambda: "sorted by count (descending)" in screen(name))
        lines = [line.split()[0] for line in screen(name).splitlines()
                 if line.split()[:1] in (["tick"], ["tock"])]
        assert lines == ["tick", "tock"]
        tmux("send-keys", "-t", name, "Up")
        wait_for(lambda: "sorted by count (ascending)" in screen(name))
        lines = [line.split()[0] for line in screen(name).splitlines()
                 if line.split()[:1] in (["tick"], ["tock"])]
        assert lines == ["tock", "tick"]

        tmux("send-keys", "-t", name, "q")
        wait_for(lambda: tmux("has-session", "-t", name).returncode != 0, scaled(15))
    finally:
        tmux("kill-session", "-t", name)
        workload.close()
