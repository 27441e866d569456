"""Soak (`make soak`, not part of `make test`): 1,000 processes with a
recorder core exec, record and exit under `recorder trace --all` and under
`recorder daemon --all`; the controller's open descriptors, resident memory
and BPF map entries come back to where they were after a warm-up.

Named without the test_ prefix so that `pytest tests` does not collect it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.prometheus import free_port
from timing import scaled

PROCESSES = int(os.environ.get("RECORDER_SOAK_PROCESSES", "1000"))
WARMUP = 100
SLACK = 100     # descriptors or map entries
RECORDER = str(Path(sys.executable).parent / "recorder")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def map_entries(pid: int) -> int:
    """Entries in the hash maps `pid` holds open (array maps do not grow)."""
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        if "map_id" not in fields or fields.get("map_type", "").strip() not in (
                "1", "5", "9", "10"):   # hash, percpu hash, lru, lru percpu
            continue
        dump = subprocess.run(["bpftool", "-j", "map", "dump", "id",
                               fields["map_id"].strip()],
                              capture_output=True, text=True, check=False)
        if dump.returncode == 0:
            total += len(json.loads(dump.stdout or "[]"))
    return total


def run_processes(progs: Path, count: int) -> None:
    """`count` short workload_ticks, a few at a time: exec, record, exit."""
    running: list[subprocess.Popen] = []
    for _ in range(count):
        running.append(subprocess.Popen([str(progs / "workload_ticks")],
                                        stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL))
        running[-1].stdin.write(b"tock 3\nexit\n")
        running[-1].stdin.close()
        if len(running) >= 8:
            running.pop(0).wait(timeout=scaled(30))
    for process in running:
        process.wait(timeout=scaled(30))


def measure(pid: int) -> tuple[int, int, int]:
    return fds(pid), rss_kib(pid), map_entries(pid)


def settle(pid: int, baseline: tuple[int, int, int], seconds: float) -> tuple:
    """Wait until descriptors and map entries are back to the baseline (the
    controller forgets exited processes on its own schedule)."""
    deadline = time.monotonic() + scaled(seconds)
    while True:
        now = measure(pid)
        if (now[0] <= baseline[0] + SLACK // 2 and now[2] <= baseline[2] + SLACK // 2) \
                or time.monotonic() > deadline:
            return now
        time.sleep(1)


@pytest.mark.parametrize("command", ["trace", "daemon"])
def test_exec_exit_soak_returns_to_baseline(progs: Path, tmp_path: Path,
                                            command: str) -> None:
    argv = {"trace": [RECORDER, "trace", "--all", "tock"],
            "daemon": [RECORDER, "daemon", "--all", "--grace", "1", "--pin-dir", "",
                       "--listen", f"127.0.0.1:{free_port()}",
                       "--snapshot-dir", str(tmp_path / "snapshots")]}[command]
    log = tmp_path / "controller.log"    # a file: a full pipe would block it
    with open(log, "w") as errors:
        controller = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors)
    try:
        deadline = time.monotonic() + scaled(60)
        while "Hit Ctrl-C to end." not in log.read_text():   # loaded, following
            assert controller.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        run_processes(progs, WARMUP)
        baseline = settle(controller.pid, measure(controller.pid), 5)
        run_processes(progs, PROCESSES)
        after = settle(controller.pid, baseline, 60)
        print(f"{command}: baseline fds {baseline[0]} rss {baseline[1]} KiB "
              f"map entries {baseline[2]}; after {PROCESSES}: fds {after[0]} "
              f"rss {after[1]} KiB map entries {after[2]}")
        assert controller.poll() is None, log.read_text()[-2000:]
        # --all also arms other users' processes on a shared machine: the
        # slack is theirs; a leak of one per process would be 1,000.
        assert after[0] <= baseline[0] + SLACK
        assert after[2] <= baseline[2] + SLACK
        assert after[1] <= baseline[1] + 20 * 1024    # KiB: no per-process growth
    finally:
        controller.terminate()
        controller.wait(timeout=scaled(30))
