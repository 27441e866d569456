"""`recorder probes` through the real CLI, on real processes and files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from timing import scaled

from recorder_tracer.cli import main
from recorder_tracer.kernel.harvest import PROBE_ARGUMENTS

RECORDER = [sys.executable, "-m", "recorder_tracer.cli"]
PYTHON = "/usr/bin/python3.11"
LIBRECORDER = Path(__file__).resolve().parent.parent / "build" / "librecorder.so"
NO_SUCH_PID = 4194305       # above the largest pid_max Linux allows
# topic -> (sites, ring size), tests/progs/workload_ticks.c: its one RECORD
# and the site RECORDER_DEFINE adds for recorder_append*.
WORKLOAD_TOPICS = {
    "tick": (2, 64),
    "tock": (2, 64),
    "flood": (2, 1024),
}
CORE_TOPICS = {"recorder_core": 64, "recorder_signals": 32}    # probes/src/core.c
# librecorder.so also has dynamic.c's probe, shared by run-time topics (no
# ring); a static link leaves dynamic.c out unless the program makes topics.
LIBRARY_TOPICS = {**CORE_TOPICS, "recorder_dynamic": 0}
PYTHON_PROBES = [
    "audit", "function__entry", "function__return", "gc__done", "gc__start",
    "import__find__load__done", "import__find__load__start", "line",
]
requires_python = pytest.mark.skipif(not Path(PYTHON).exists(),
                                     reason=f"{PYTHON} is not installed")


def recorder(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the recorder CLI; its output as text."""
    return subprocess.run([*RECORDER, *args], capture_output=True, text=True,
                          timeout=scaled(30))


def probes_json(*targets: str) -> list[dict[str, Any]]:
    """`recorder probes --json TARGETS`, parsed."""
    result = recorder("probes", "--json", *targets)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def readelf_sites(path: str) -> Counter[tuple[str, str]]:
    """Sites per (provider, probe) in `path`, as readelf counts them."""
    text = subprocess.run(["readelf", "-nW", path], check=True,
                          capture_output=True, text=True).stdout
    return Counter(re.findall(r"Provider: (\S+)\s+Name: (\S+)", text))


class Ready:
    """A process that prints "ready PID" or "ready" and waits on stdin."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True,
                                        env=env)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().split()[0] == "ready"
        self.pid = self.process.pid

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=scaled(10))


@pytest.fixture
def workload(progs: Path) -> Iterator[Ready]:
    """workload_ticks with topic tock's trace value set to 5."""
    started = Ready([str(progs / "workload_ticks")],
                    env={"RECORDER_TRACES": "tock=5"})
    yield started
    started.close()


def core_sites(path: str) -> dict[str, int]:
    """Sites of the core's own topics in `path` (the core's code sets them)."""
    sites = readelf_sites(path)
    return {topic: count for (provider, topic), count in sites.items()
            if provider == "recorder" and topic in LIBRARY_TOPICS}


def test_process_lists_its_topics_with_ring_sizes_and_trace_values(
        workload: Ready, progs: Path) -> None:
    path = str(progs / "workload_ticks")
    rows = probes_json(str(workload.pid))

    core = core_sites(path)
    expected = {**{t: (n, ring, 0) for t, (n, ring) in WORKLOAD_TOPICS.items()},
                **{t: (core[t], ring, 0) for t, ring in CORE_TOPICS.items()}}
    expected["tock"] = (2, 64, 5)
    assert [row["probe"] for row in rows] == sorted(expected)
    for row in rows:
        sites, ring, trace = expected[row["probe"]]
        assert row == {
            "pid": workload.pid, "path": path, "file": "workload_ticks",
            "provider": "recorder", "probe": row["probe"], "sites": sites,
            "semaphore": True, "semaphore_value": 0, "ring": ring,
            "trace": trace, "arguments": [PROBE_ARGUMENTS] * sites,
            "runtime": False,
        }


def test_text_columns_stay_under_80_characters(workload: Ready,
                                               progs: Path) -> None:
    result = recorder("probes", str(workload.pid))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["PID", "FILE", "PROBE", "SITES", "SEM", "RING",
                                "TRACE"]
    tick = next(line for line in lines if "recorder:tick " in line)
    assert tick.split() == [str(workload.pid), "workload_ticks", "recorder:tick",
                            "2", "0", "64", "0"]
    assert all(len(line) < 80 for line in lines)
    # Fixed columns: every value ends where its title ends.
    assert lines[0].index("TRACE") + 5 == len(tick)


@requires_python
def test_file_lists_every_python_probe_with_its_semaphore() -> None:
    rows = probes_json(PYTHON)

    assert [row["probe"] for row in rows] == PYTHON_PROBES
    assert {(row["pid"], row["provider"], row["file"], row["sites"],
             row["semaphore"], row["semaphore_value"], row["ring"])
            for row in rows} == {(None, "python", "python3.11", 1, True, None,
                                  None)}
    entry = rows[PYTHON_PROBES.index("function__entry")]
    assert entry["arguments"] == ["8@%rbp 8@%r12 -4@%eax"]

    text = recorder("probes", PYTHON).stdout.splitlines()
    assert text[2].split() == ["-", "python3.11", "python:function__entry", "1",
                               "yes", "-", "-"]


@requires_python
def test_recorder_topics_come_before_other_probes_of_a_process() -> None:
    if not LIBRECORDER.exists():
        pytest.fail("build/librecorder.so is missing: run `make`")
    script = (f"import ctypes; ctypes.CDLL({str(LIBRECORDER)!r}); "
              "print('ready', flush=True); input()")
    both = Ready([PYTHON, "-c", script])
    try:
        rows = probes_json(str(both.pid))
    finally:
        both.close()

    core = core_sites(str(LIBRECORDER))
    assert [(row["file"], row["provider"], row["probe"], row["sites"], row["ring"])
            for row in rows] == [
        ("librecorder.so", "recorder", topic, core[topic], ring)
        for topic, ring in sorted(LIBRARY_TOPICS.items())
    ] + [("python3.11", "python", probe, 1, None) for probe in PYTHON_PROBES]
    assert {row["semaphore_value"] for row in rows} == {0}


@requires_python
def test_recorder_topics_come_first_across_targets(workload: Ready) -> None:
    rows = probes_json(PYTHON, str(workload.pid))

    assert [(row["pid"], row["provider"]) for row in rows] == \
        [(workload.pid, "recorder")] * 5 + [(None, "python")] * 8


def test_no_argument_lists_every_process_mapping_a_recorder_core(
        workload: Ready) -> None:
    rows = probes_json()

    mine = [row["probe"] for row in rows if row["pid"] == workload.pid]
    assert sorted(mine) == sorted([*WORKLOAD_TOPICS, *CORE_TOPICS])
    # Every process listed maps a core: it has recorder topics.
    assert all(any(other["pid"] == row["pid"] and other["provider"] == "recorder"
                   for other in rows) for row in rows)


@pytest.mark.bpf
def test_semaphore_shows_how_many_tracers_armed_a_topic(workload: Ready) -> None:
    def semaphores() -> dict[str, int]:
        return {row["probe"]: row["semaphore_value"]
                for row in probes_json(str(workload.pid))}

    # --latency: the trap raises the semaphore (the batch harvest never does).
    tracer = subprocess.Popen([*RECORDER, "trace", "--latency", "-p",
                               str(workload.pid), "tick"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert tracer.stderr is not None
        assert tracer.stderr.readline().startswith("Tracing recorder topics")
        armed = semaphores()
    finally:
        tracer.send_signal(2)
        tracer.communicate(timeout=scaled(20))

    # The kernel counts each armed site: tick has two (its RECORD and the
    # one RECORDER_DEFINE adds for recorder_append*).
    assert armed == {"flood": 0, "recorder_core": 0, "recorder_signals": 0,
                     "tick": 2, "tock": 0}
    assert semaphores()["tick"] == 0


@pytest.mark.parametrize(("target", "message"), [
    ("/etc/passwd", "/etc/passwd: not an ELF file"),
    ("/no/such/file", "/no/such/file: No such file or directory"),
    (str(NO_SUCH_PID), f"process {NO_SUCH_PID} does not exist"),
])
def test_bad_target_is_one_line_error_and_exit_1(target: str, message: str) -> None:
    result = recorder("probes", target)

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"recorder: {message}\n"


def command_names() -> list[str]:
    """Every command of the `recorder` group."""
    return sorted(main.commands) if isinstance(main, click.Group) else []


@pytest.mark.parametrize("command", command_names())
def test_every_command_help_ends_with_examples(command: str) -> None:
    result = recorder(command, "--help")

    assert result.returncode == 0, result.stderr
    examples = result.stdout.split("Examples:\n", 1)
    assert len(examples) == 2, f"`recorder {command} --help` has no Examples"
    lines = [line.strip() for line in examples[1].splitlines() if line.strip()]
    assert lines[0].startswith(f"recorder {command} ")
    assert any(line.startswith("#") or " # " in line for line in lines)
