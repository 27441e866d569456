"""The controller's own start: `recorder trace -p PID TOPIC` from launch to its
first record line, and its peak resident memory, with compiled programs
taken from the cache (kernel/program_cache.py) or compiled by bcc.

Usage (root): .venv/bin/python bench/startup_bench.py [--rounds N]

Modes, each run `--rounds` times (medians and maxima printed):
- compiled: RECORDER_BPF_CACHE='' (no cache: bcc compiles every program);
- cached: a cache filled by one run before the rounds.
The traced program (bench/rate_load.c) records 1,000 records/s all along.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine
import programs

REPO = Path(__file__).resolve().parent.parent
RECORDER = REPO / ".venv" / "bin" / "recorder"


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def one_start(target: int, cache: str) -> tuple[float, int]:
    """Seconds from launch to the first record line, and peak RSS (KiB)."""
    env = dict(os.environ, RECORDER_BPF_CACHE=cache)
    started = time.monotonic()
    controller = subprocess.Popen(
        [str(RECORDER), "trace", "-p", str(target), "load", "--no-snapshots"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert controller.stdout is not None
    try:
        for line in controller.stdout:
            fields = line.split()
            if len(fields) > 4 and fields[4] == "load" and fields[0][0].isdigit():
                first = time.monotonic() - started
                break
        else:
            raise RuntimeError("the controller printed no record")
        rss = peak_rss_kib(controller.pid)
    finally:
        controller.send_signal(signal.SIGINT)
        try:
            controller.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            controller.kill()
            controller.wait()
    return first, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cached-only", action="store_true",
                        help="skip the compiled mode (bcc compiling every program)")
    options = parser.parse_args()
    program = programs.Program("rate_load", (f"-I{programs.PROBES / 'include'}",),
                               (str(programs.core_library(programs.PROBES)),))
    path = programs.build(program)
    load = subprocess.Popen([str(path), "1000", "3600"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert load.stdin is not None and load.stdout is not None
    target = int(load.stdout.readline().split()[1])
    load.stdin.write("go\n")
    load.stdin.flush()
    label = machine.cpu_label()
    try:
        with tempfile.TemporaryDirectory(prefix="recorder-bench-cache-") as folder:
            cache = str(Path(folder) / "bpf")
            one_start(target, cache)         # fills the cache
            modes = [("compiled", ""), ("cached", cache)]
            for mode, directory in modes[1:] if options.cached_only else modes:
                runs = [one_start(target, directory) for _ in range(options.rounds)]
                firsts = [first for first, _ in runs]
                rss = [kib / 1024 for _, kib in runs]
                print(f"{mode:9} first record median {statistics.median(firsts):.2f} s "
                      f"max {max(firsts):.2f} s; peak RSS median "
                      f"{statistics.median(rss):.0f} MiB max {max(rss):.0f} MiB "
                      f"({options.rounds} rounds) [{label}]", flush=True)
    finally:
        load.kill()
        load.wait()


if __name__ == "__main__":
    main()
