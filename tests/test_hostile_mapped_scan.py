"""The snapshot watcher's rescan reads a process's maps again only when
they may have changed: nobody's processes that map no recorder file cost
one /proc/PID/stat read per rescan, and one that maps a core later is
still found at the next rescan."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.tracer import wait_for
from hostile_helpers import nobody_popen
from timing import scaled

from recorder_tracer.postmortem.rescan import MappedScan

pytestmark = pytest.mark.host

# Maps nothing of ours until told, then maps the program executable.
LATE_MAPPER = """
import mmap, sys
print("ready", flush=True)
sys.stdin.readline()
with open(sys.argv[1], "rb") as file:
    view = mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ | mmap.PROT_EXEC)
print("mapped", flush=True)
sys.stdin.readline()
"""


class Counting:
    """A `wanted` that says yes and counts, per pid, the maps read."""

    def __init__(self) -> None:
        self.reads: dict[int, int] = {}

    def __call__(self, pid: int) -> bool:
        self.reads[pid] = self.reads.get(pid, 0) + 1
        return True


@pytest.fixture
def late_mapper(progs: Path) -> Iterator[subprocess.Popen[str]]:
    process = nobody_popen(sys.executable, "-c", LATE_MAPPER,
                           str(progs / "workload_ticks"), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    yield process
    process.kill()
    process.wait(timeout=scaled(10))


def test_unchanged_maps_are_read_again_less_and_less_often(
        late_mapper: subprocess.Popen[str]) -> None:
    scan, counting, pid = MappedScan(), Counting(), late_mapper.pid
    start = time.monotonic()
    # Read at 0, then after 2, 4, 8 s of unchanged maps: 0, 2, 6, 14.
    for after, expected in ((0, 1), (1, 1), (2, 2), (5, 2), (6, 3), (13, 3),
                            (14, 4), (20, 4)):
        assert pid not in scan.recorder_processes(counting, start + after)
        assert counting.reads[pid] == expected, f"at +{after} s"
        assert pid in scan


def test_a_core_mapped_later_is_found_at_the_next_scan(
        late_mapper: subprocess.Popen[str]) -> None:
    scan, counting, pid = MappedScan(), Counting(), late_mapper.pid
    now = time.monotonic()
    assert pid not in scan.recorder_processes(counting, now)
    assert pid not in scan.recorder_processes(counting, now + 0.5)
    assert counting.reads[pid] == 1
    assert late_mapper.stdin is not None and late_mapper.stdout is not None
    late_mapper.stdin.write("map\n")
    late_mapper.stdin.flush()
    assert late_mapper.stdout.readline() == "mapped\n"
    # Long before its backoff is due: its virtual size grew.
    assert pid in scan.recorder_processes(counting, now + 1)
    assert counting.reads[pid] == 2 and pid not in scan


def test_exited_and_forgotten_processes_are_dropped_and_the_rest_bounded(
        progs: Path) -> None:
    sleepers = [nobody_popen("sleep", "60") for _ in range(5)]
    try:
        # Past setpriv's exec, which changes their maps.
        wait_for(lambda: all(Path(f"/proc/{s.pid}/comm").read_text() == "sleep\n"
                             for s in sleepers))
        scan = MappedScan(size=100_000)
        # Both scans at one moment: a loaded machine can take the 2 s of
        # the first backoff between them, and the rest would be read again.
        now = time.monotonic()
        scan.recorder_processes(lambda pid: True, now)
        assert all(s.pid in scan for s in sleepers)
        sleepers[0].kill()
        sleepers[0].wait()
        scan.forget(sleepers[1].pid)
        counting = Counting()
        scan.recorder_processes(counting, now)
        assert sleepers[0].pid not in scan
        assert counting.reads.get(sleepers[1].pid) == 1     # read again
        assert all(s.pid not in counting.reads for s in sleepers[2:])
        small = MappedScan(size=3)
        small.recorder_processes(lambda pid: True)
        assert len(small) == 3
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
