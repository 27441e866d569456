"""Rings: what a dump keeps after wrapping, and many threads on one topic.

The programs live in tests/progs/core_ring.c; they read rings back through
`recorder_registry` with the seqlock rule of probes/PROBES.md.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from helpers.core import run as run_program
from timing import scaled

DUMP_LINE = re.compile(
    r"^(?P<where>\S+): \[(?P<sec>\d+)\.(?P<ns>\d{9}) (?P<tid>\d+)\] "
    r"(?P<topic>\w+): (?P<message>.*)$"
)


def run(program: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_program(program, *args, timeout=scaled(60))


def dump_messages(stderr: str, topic: str) -> list[str]:
    messages = []
    for line in stderr.splitlines():
        match = DUMP_LINE.match(line)
        if match and match["topic"] == topic:
            messages.append(match["message"])
    return messages


def counters(stdout: str) -> dict[str, int]:
    """Parses 'name value name value ...' lines into one dict."""
    values: dict[str, int] = {}
    for line in stdout.splitlines():
        words = line.split()
        values.update(zip(words[::2], map(int, words[1::2]), strict=True))
    return values


def test_ring_keeps_last_n_records_in_order(progs: Path) -> None:
    result = run(progs / "core_ring", "wrap", "61")
    assert result.returncode == 0, result.stderr
    # RECORDER(ring, 23, ...): the last 23 of 61, oldest first.
    assert dump_messages(result.stderr, "ring") == [
        f"record {i} of 61" for i in range(38, 61)
    ]
    assert result.stdout == "shown 23\n"


def test_ring_dump_counts_records_and_overwritten(progs: Path) -> None:
    result = run(progs / "core_ring", "wrap", "61")
    assert "recorder: ring: 61 records, 38 overwritten" in result.stderr.splitlines()


def test_ring_that_did_not_wrap_shows_everything_and_no_summary(
    progs: Path,
) -> None:
    result = run(progs / "core_ring", "wrap", "23")
    assert dump_messages(result.stderr, "ring") == [
        f"record {i} of 23" for i in range(23)
    ]
    assert "overwritten" not in result.stderr
    assert result.stdout == "shown 23\n"


def test_ring_wraps_past_its_power_of_two_capacity(progs: Path) -> None:
    # 23 kept in a capacity of 32: 97 records wrap the slots three times.
    result = run(progs / "core_ring", "wrap", "97")
    assert dump_messages(result.stderr, "ring") == [
        f"record {i} of 97" for i in range(74, 97)
    ]
    assert "recorder: ring: 97 records, 74 overwritten" in result.stderr


def test_threads_hammering_one_topic_lose_and_tear_nothing(progs: Path) -> None:
    # 4 threads x 16001 records; the ring keeps 65536 per CPU, so all stay.
    result = run(progs / "core_ring", "threads", "4", "16001")
    assert result.returncode == 0, result.stderr
    values = counters(result.stdout)
    # One thread's timestamps may step back by the clock fit's few ns when
    # it is re-anchored between two records (PROBES.md, Limits): reported
    # by the program, not asserted.
    del values["backwards_time"]
    assert values == {
        "records": 64004,
        "read": 64004,
        "skipped": 0,
        "torn": 0,
        "duplicates": 0,
        "missing": 0,
        "out_of_order": 0,
    }


# Also in the VM guest: rseq restarts are the kernel's.
@pytest.mark.guest
@pytest.mark.parametrize("env", [{}, {"RECORDER_NO_RSEQ": "1"}],
                         ids=["rseq head", "locked fetch-add"])
def test_preempted_writers_of_one_cpu_lose_and_duplicate_nothing(
    progs: Path, env: dict[str, str]
) -> None:
    # 8 unpinned threads on 2 CPUs keep preempting each other between
    # reading and storing a shard's head (rseq restarts them) or in the
    # middle of a fetch-add; 8 x 8191 records fit even in one CPU's ring.
    result = run_program(progs / "core_ring", "threads", "8", "8191", env=env,
                         timeout=scaled(60))
    assert result.returncode == 0, result.stderr
    values = counters(result.stdout)
    del values["backwards_time"]
    assert values == {
        "records": 65528, "read": 65528, "skipped": 0, "torn": 0,
        "duplicates": 0, "missing": 0, "out_of_order": 0,
    }


def test_entries_read_while_the_ring_churns_are_never_torn(progs: Path) -> None:
    # 2 writers, one per CPU, x 1000003 records through a 64-entry ring,
    # read all along by a third thread.
    result = run(progs / "core_ring", "churn", "2", "1000003")
    assert result.returncode == 0, result.stderr
    values = counters(result.stdout)
    assert values["live_accepted_nonzero"] == 1
    assert values["live_torn"] == 0
    assert values["torn"] == 0
    # The final read: every kept slot whole, every record counted.
    cpus = min(2, len(os.sched_getaffinity(0)))
    assert {key: values[key] for key in ("records", "read", "skipped")} == {
        "records": 2000006,
        "read": 64 * cpus,
        "skipped": 0,
    }
    assert values["out_of_order"] == 0
