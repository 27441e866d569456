"""A process that maps a recorder core but has no registry: the snapshot
watcher's rescan looks at it less and less often, not every 2 s for ever
(each look reads up to 16 MiB of its memory).

nobody maps build/progs/workload_ticks executable without running it: its
probes say "recorder core", its memory has no registry.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_helpers import nobody_popen
from timing import scaled

from recorder_tracer.postmortem.backoff import RegistryMisses
from recorder_tracer.postmortem.snapshot import SnapshotOptions, SnapshotWatcher
from recorder_tracer.target import procs
from recorder_tracer.target.memory import ProcessImage

pytestmark = pytest.mark.bpf

# Maps the program executable, says so, then on "exec" becomes it for real.
MAPPER = """
import mmap, os, sys
path = sys.argv[1]
with open(path, "rb") as file:
    view = mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ | mmap.PROT_EXEC)
print("mapped", flush=True)
if sys.stdin.readline().strip() == "exec":
    os.execv(path, [path])
"""


class Mapper:
    def __init__(self, program: Path) -> None:
        self.process = nobody_popen(sys.executable, "-c", MAPPER, str(program),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True)
        assert self.process.stdout.readline() == "mapped\n"
        self.pid = self.process.pid

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=scaled(10))


@pytest.fixture
def watcher(tmp_path: Path) -> Iterator[SnapshotWatcher]:
    started = SnapshotWatcher(SnapshotOptions(str(tmp_path / "snaps")))
    started.start()
    yield started
    started.close()


@pytest.fixture
def mapper(progs: Path) -> Iterator[Mapper]:
    started = Mapper(progs / "workload_ticks")
    yield started
    started.close()


@pytest.fixture
def looks(monkeypatch: pytest.MonkeyPatch) -> dict[int, int]:
    """How many registry scans each pid had (the real scan runs)."""
    counted: dict[int, int] = {}
    real = ProcessImage.find_registry

    def counting(image: ProcessImage) -> int | None:
        counted[image.pid] = counted.get(image.pid, 0) + 1
        return real(image)

    monkeypatch.setattr(ProcessImage, "find_registry", counting)
    return counted


def test_a_core_without_registry_is_looked_at_less_and_less_often(
        watcher: SnapshotWatcher, mapper: Mapper, looks: dict[int, int]) -> None:
    start = time.monotonic()
    # Rescans at these times after the first; a look at 0, 2, 6, 14.
    for after, expected in ((0, 1), (1, 1), (2, 2), (5, 2), (6, 3), (13, 3),
                            (14, 4), (20, 4)):
        watcher.rescan(now=start + after)
        assert looks.get(mapper.pid, 0) == expected, f"at +{after} s"
    assert mapper.pid not in watcher.known


def test_the_miss_is_forgotten_when_the_process_execs_a_core(
        watcher: SnapshotWatcher, mapper: Mapper, looks: dict[int, int]) -> None:
    watcher.rescan()
    assert looks[mapper.pid] == 1 and mapper.pid not in watcher.known
    mapper.send("exec")         # now workload_ticks for real: a registry
    deadline = time.monotonic() + scaled(10)
    while mapper.pid not in watcher.known:
        assert time.monotonic() < deadline, "never registered after its exec"
        watcher.poll(timeout_ms=20)


@pytest.mark.serial
def test_a_reused_pid_is_looked_at_at_once(progs: Path) -> None:
    """The miss names a pid and a start time: another process given the
    same pid (ns_last_pid makes the next fork take it) is not skipped."""
    misses = RegistryMisses()
    first = Mapper(progs / "workload_ticks")
    pid = first.pid
    now = time.monotonic()
    misses.missed(pid, now)
    assert not misses.due(pid, now + 1)
    first.close()
    reused = None
    for _ in range(20):     # other forks on the machine may take it first
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        candidate = subprocess.Popen(["sleep", "60"])
        if candidate.pid == pid:
            reused = candidate
            break
        candidate.kill()
        candidate.wait()
    if reused is None:
        pytest.fail(f"pid {pid} was not given again in 20 forks")
    try:
        assert procs.start_time(pid) is not None
        assert misses.due(pid, now + 1)
    finally:
        reused.kill()
        reused.wait()
