"""Dumps on fatal signals, and what a forked child records.

tests/progs/core_crash.c records a known number of entries, then crashes
(after recorder_dump_on_common_signals(0, 0)) or forks.
"""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest
from helpers.core import run
from timing import scaled

# Also in the VM guest: signal delivery and the alternate stack are the kernel's.
pytestmark = pytest.mark.guest

DUMP_LINE = re.compile(
    r"^(?P<where>\S+): \[(?P<sec>\d+)\.(?P<ns>\d{9}) (?P<tid>\d+)\] "
    r"(?P<topic>\w+): (?P<message>.*)$"
)


def dumped_topics(stderr: str) -> set[str]:
    return {m["topic"] for m in map(DUMP_LINE.match, stderr.splitlines()) if m}


def records(stderr: str, topic: str) -> list[tuple[int, str]]:
    """(tid, message) of each dumped entry of `topic`, in dump order."""
    found = []
    for line in stderr.splitlines():
        match = DUMP_LINE.match(line)
        if match and match["topic"] == topic:
            found.append((int(match["tid"]), match["message"]))
    return found


@pytest.mark.parametrize(
    ("scenario", "number", "name", "code"),
    [
        ("segv", signal.SIGSEGV, "SEGV", "code 1 address 0x17"),
        ("abort", signal.SIGABRT, "ABRT", "code -6"),
        # The handler runs on an alternate stack: none is left here.
        ("overflow", signal.SIGSEGV, "SEGV", "code "),
    ],
)
def test_fatal_signal_dumps_then_kills_by_that_signal(
    progs: Path, scenario: str, number: int, name: str, code: str
) -> None:
    result = run(progs / "core_crash", scenario, "23")
    assert result.returncode == -number
    lines = result.stderr.splitlines()
    assert lines[0] == f"recorder: received signal {number} ({name}), dumping"
    crash = records(result.stderr, "crash")
    assert [message for _, message in crash] == [
        f"before the crash {i}" for i in range(23)
    ]
    signals = [message for _, message in records(result.stderr, "recorder_signals")]
    # The handler's own record comes last: it was made last.
    assert signals[-1].startswith(f"Received signal {number} {code}")
    assert DUMP_LINE.match(lines[-1])["topic"] == "recorder_signals"


def test_dump_shows_the_crashing_thread_id(progs: Path) -> None:
    result = run(progs / "core_crash", "segv", "23")
    tids = {tid for tid, _ in records(result.stderr, "crash")}
    assert len(tids) == 1
    assert tids.pop() > 0


def test_forked_child_records_with_its_own_tid(progs: Path) -> None:
    result = run(progs / "core_crash", "fork", "7", "11")
    assert result.returncode == 0, result.stderr
    stdout = result.stdout.splitlines()
    child_pid = int(stdout[0].split()[2])
    parent_pid = int(stdout[1].split()[2])
    assert stdout[1] == f"parent pid {parent_pid} child status 0"
    assert child_pid != parent_pid

    child_part = result.stderr.split("parent dump\n")[0]
    child_dump = child_part.split("child dump\n")[1].split("child done\n")[0]
    # The child inherits the parent's ring, then adds its own records.
    assert records(child_dump, "family") == [
        (parent_pid, f"parent {parent_pid} record {i}") for i in range(7)
    ] + [(child_pid, f"child {child_pid} record {i}") for i in range(11)]


def test_parent_ring_is_unaffected_by_the_child(progs: Path) -> None:
    result = run(progs / "core_crash", "fork", "7", "11")
    parent_pid = int(result.stdout.splitlines()[1].split()[2])
    parent_dump = result.stderr.split("parent dump\n")[1]
    assert records(parent_dump, "family") == [
        (parent_pid, f"parent {parent_pid} record {i}") for i in range(14)
    ]


def test_recorder_dump_chooses_what_a_fatal_signal_dumps(progs: Path) -> None:
    result = run(progs / "core_crash", "segv", "23", env={"RECORDER_DUMP": "CRASH"})
    assert result.returncode == -signal.SIGSEGV
    assert dumped_topics(result.stderr) == {"crash"}
    assert len(records(result.stderr, "crash")) == 23


def test_bad_recorder_dump_is_reported_and_a_crash_dumps_everything(
    progs: Path,
) -> None:
    result = run(progs / "core_crash", "segv", "23", env={"RECORDER_DUMP": "cr("})
    assert result.returncode == -signal.SIGSEGV
    assert result.stderr.splitlines()[0] == (
        "recorder: invalid RECORDER_DUMP pattern 'cr(': Unmatched ( or \\(; "
        "no dump at exit, all topics on a fatal signal"
    )
    assert dumped_topics(result.stderr) == {
        "crash",
        "recorder_core",
        "recorder_signals",
    }


def test_recorder_dump_dumps_matching_topics_at_exit(progs: Path) -> None:
    result = run(progs / "core_crash", "fork", "2", "0", env={"RECORDER_DUMP": "fam.*"})
    assert result.returncode == 0
    # The child exits (its dump at exit), then the parent dumps explicitly
    # and again at exit: 2 records, then 4 twice.
    exit_dumps = result.stderr.split("parent dump\n")[1]
    assert len(records(exit_dumps, "family")) == 8
    assert dumped_topics(result.stderr) == {"family"}


def test_a_previous_handler_gets_the_real_fault_after_the_dump(progs) -> None:
    result = subprocess.run([str(progs / "core_chain")], capture_output=True,
                            text=True, timeout=scaled(30))
    assert result.returncode == 42
    assert result.stdout == "own handler: signal 11 code 1 address 0x17\n"
    assert result.stderr.count("chain: before the fault") == 23
