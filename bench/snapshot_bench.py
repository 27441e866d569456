"""Fault-to-file latency of crash snapshots (`make bench`, after the tracer).

Victims (build/progs/snapshot_victim) record 10,000 entries and die by
SIGSEGV while a SnapshotWatcher runs; for each, the latency is the time from
the fault (the BPF program's clock at signal delivery, in the file) to the
moment the watcher has the file written (renamed into place), both
CLOCK_MONOTONIC. The BPF copy itself (`capture.copy_ns`) is shown apart.
The cost per record of the flight ring next to the empty-program floor is
the tracer benchmark's `flight` and `empty` rows, printed just before this
in the same run.

Examples:
    .venv/bin/python bench/snapshot_bench.py            # 15 victims
    .venv/bin/python bench/snapshot_bench.py --victims 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine

REPO = Path(__file__).resolve().parent.parent
VICTIM = REPO / "build" / "progs" / "snapshot_victim"
TARGET_MS = 100.0
RECORDS = 256


def one_victim(watcher: object, records: int) -> tuple[float, float]:
    """(fault-to-file ms, BPF copy us) of one victim."""
    from recorder_tracer.postmortem.snapshot_file import read_snapshot
    process = subprocess.Popen([str(VICTIM), "victim", "10000"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None
    pid = int(process.stdout.readline().split()[1])
    deadline = time.monotonic() + 10
    while pid not in watcher.known:                     # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise RuntimeError(f"victim {pid} never registered")
        watcher.poll(timeout_ms=10)                     # type: ignore[attr-defined]
    process.stdin.write("go\n")
    process.stdin.flush()
    process.stdout.readline()
    process.stdin.write("segv\n")
    process.stdin.flush()
    while True:
        for path in watcher.poll(timeout_ms=100):       # type: ignore[attr-defined]
            if f".{pid}." in path.name:
                written = time.monotonic_ns()
                process.wait()
                snapshot = read_snapshot(path)
                assert len(snapshot["records"]) == records
                return ((written - snapshot["time_ns"]) / 1e6,
                        snapshot["capture"]["copy_ns"] / 1e3)
        if time.monotonic() > deadline:
            raise RuntimeError(f"no snapshot of victim {pid}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--victims", type=int, default=15)
    arguments = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("Snapshot benchmark skipped: needs root.")
        return 0
    from recorder_tracer.postmortem.snapshot import SnapshotOptions, SnapshotWatcher
    with tempfile.TemporaryDirectory(prefix="recorder-bench-snaps-") as directory:
        watcher = SnapshotWatcher(SnapshotOptions(directory, records=RECORDS))
        watcher.start()
        try:
            results = [one_victim(watcher, RECORDS) for _ in range(arguments.victims)]
        finally:
            watcher.close()
    latencies = sorted(ms for ms, _ in results)
    copies = sorted(us for _, us in results)
    verdict = "PASS" if latencies[-1] <= TARGET_MS else "FAIL"
    for line in machine.tagged([
        f"Crash snapshots: {arguments.victims} victims, N={RECORDS} records each",
        f"  fault to file   median {statistics.median(latencies):7.2f} ms, "
        f"max {latencies[-1]:7.2f} ms",
        f"  BPF copy        median {statistics.median(copies):7.1f} us, "
        f"max {copies[-1]:7.1f} us",
        f"{verdict} fault-to-file latency <= {TARGET_MS:g} ms "
        f"(max {latencies[-1]:.2f} ms)",
    ]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
