"""Benchmark `recorder daemon`: its CPU use and RSS while processes record.

Starts 2 processes (bench/rate_load.c) recording 200 k records/s each
(`--rate`), a daemon watching them, metrics only (`recorder daemon -p A -p
B`), and scrapes its /metrics once a second, as Prometheus would. Reports
the daemon's CPU (% of one CPU, from /proc/PID/stat) and RSS over the
window, the scrape time, the rate achieved, and checks that the exported
totals equal the records made. The per-record cost of a metrics-only topic
next to the empty-program floor is tracer_bench.py's `metrics` row.

Examples:
    .venv/bin/python bench/metrics_bench.py                # 2 x 200 k/s, 10 s
    .venv/bin/python bench/metrics_bench.py --seconds 5 --rate 50000
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import machine
import programs

ROOT = Path(__file__).resolve().parent.parent


def rate_load() -> programs.Program:
    return programs.Program("rate_load", (f"-I{programs.PROBES / 'include'}",),
                            (str(programs.core_library(programs.PROBES)), "-lpthread"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match[1]) / 1024 if match else 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int) -> tuple[str, float]:
    started = time.monotonic()
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.read().decode(), time.monotonic() - started


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=200_000,
                        help="records/s of each process (default 200000)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="how long they record (default 10)")
    parser.add_argument("--processes", type=int, default=2)
    arguments = parser.parse_args(argv)
    path = programs.build(rate_load())
    loads = [subprocess.Popen([str(path), str(arguments.rate), str(arguments.seconds)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(arguments.processes)]
    pids = [int(load.stdout.readline().split()[1]) for load in loads]  # type: ignore[union-attr]
    port = free_port()
    command = [sys.executable, "-m", "recorder_tracer.cli", "daemon",
               "--listen", f"127.0.0.1:{port}", "load"]
    for pid in pids:
        command += ["-p", str(pid)]
    daemon = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                scrape(port)
                break
            except OSError:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    print("metrics bench: the daemon did not start", file=sys.stderr)
                    return 1
                time.sleep(0.2)
        cpu_before, wall_before = cpu_seconds(daemon.pid), time.monotonic()
        for load in loads:
            load.stdin.write("go\n")        # type: ignore[union-attr]
            load.stdin.flush()              # type: ignore[union-attr]
        scrapes: list[float] = []
        rss: list[float] = []
        while any(load.poll() is None for load in loads):
            time.sleep(1)
            scrapes.append(scrape(port)[1])
            rss.append(rss_mib(daemon.pid))
        cpu = cpu_seconds(daemon.pid) - cpu_before
        wall = time.monotonic() - wall_before
        made = [int(load.stdout.read().split()[-1]) for load in loads]  # type: ignore[union-attr]
        text, _ = scrape(port)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        for load in loads:
            if load.poll() is None:
                load.kill()
                load.wait()
    if os.environ.get("METRICS_BENCH_DEBUG"):
        print(text)
    exported = sum(float(value) for value in re.findall(
        r'^recorder_records_total\{[^}]*topic="load"[^}]*\} (\S+)$', text, re.M))
    for line in machine.tagged([
        f"recorder daemon: {arguments.processes} processes x {arguments.rate} "
        f"records/s for {arguments.seconds:g} s (metrics only)",
        f"  records made {sum(made)} ({sum(made) / wall / 1e3:.0f} k/s achieved), "
        f"exported {exported:.0f}: "
        + ("EXACT" if exported == sum(made) else "MISMATCH"),
        f"  daemon CPU {100 * cpu / wall:.1f}% of one CPU over {wall:.1f} s; "
        f"RSS {max(rss, default=0):.0f} MiB max; "
        f"scrape {1000 * max(scrapes, default=0):.1f} ms max",
    ]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
