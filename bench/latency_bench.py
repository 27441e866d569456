"""How long a record takes to reach the controller: the delay from its
timestamp (CLOCK_MONOTONIC, in the record) to the moment a trace session
has it, with the traced program paced at 1 k records/s.

A TraceSession (session/loop.py, what `recorder trace -p PID load` runs)
traces bench/rate_load.c, which records one entry a millisecond and sleeps
between them. Each record is timed twice, in the controller's process:
- received: when the session has decoded it (it enters the reorder buffer);
- emitted: when the reorder buffer hands it to the sink (what a user sees
  printed): once every stream was read empty after its timestamp, less a
  margin, or at the latest the reorder window after it (decode/reorder.py).
Modes: the default live path (a trap per record, kernel/harvest.py) and
--batch (the processes' own rings, kernel/batch.py).

    sudo .venv/bin/python bench/latency_bench.py            # ~15 s
    sudo .venv/bin/python bench/latency_bench.py --seconds 10 --rate 1000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine
import programs

TARGET_P99_MS = 100.0


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank).

    >>> percentile([float(v) for v in range(1, 101)], 0.99)
    99.0
    """
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))
    return ordered[rank]


class Timings:
    """Delays (ms) from each record's timestamp to its arrival and emission."""

    def __init__(self) -> None:
        self.received: list[float] = []
        self.emitted: list[float] = []
        self.late = 0           # records that came after a newer one left

    def on_received(self, push: Any) -> Any:
        def timed(record: Any) -> None:
            if record.topic == "load":
                self.received.append((time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                                      - record.ts) / 1e6)
            push(record)
        return timed

    def on_emitted(self, record: Any) -> None:
        if record.topic == "load":
            self.emitted.append((time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                                 - record.ts) / 1e6)


def one_mode(path: Path, batch: bool, arguments: argparse.Namespace) -> Timings:
    """Trace one rate_load run in one mode; time every record."""
    from recorder_tracer.decode.spec import TopicSpec
    from recorder_tracer.session.loop import TraceOptions, TraceSession
    load = subprocess.Popen([str(path), str(arguments.rate), str(arguments.seconds)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert load.stdin is not None and load.stdout is not None
    timings = Timings()
    try:
        pid = int(load.stdout.readline().split()[1])
        options = TraceOptions(pids=[pid], spec=TopicSpec.parse("load"),
                               latency=not batch)
        session = TraceSession(options, timings.on_emitted)
        if arguments.window_ms is not None:     # what-if: another window
            session.reorder.window_ns = int(arguments.window_ms * 1e6)
        if arguments.margin_ms is not None:     # what-if: another margin
            session.reorder.margin_ns = int(arguments.margin_ms * 1e6)
        # Records enter the reorder buffer through the sources' emit
        # callback, bound at construction: time them there.
        for source in session.sources:
            source.emit = timings.on_received(source.emit)  # type: ignore[attr-defined]
        session.start()
        try:
            load.stdin.write("go\n")
            load.stdin.flush()
            while session.poll(timeout_ms=arguments.poll_ms):
                pass
        finally:
            session.close()
            timings.late = session.reorder.late
    finally:
        if load.poll() is None:
            load.kill()
        load.wait()
    return timings


def describe(name: str, values: list[float]) -> str:
    if not values:
        return f"  {name:<9} no record"
    p99 = percentile(values, 0.99)
    verdict = "PASS" if p99 <= TARGET_P99_MS else "FAIL"
    p50 = statistics.median(values)
    return (f"  {name:<9} {len(values):6d} records  p50 {p50:7.1f} ms"
            f"  p99 {p99:7.1f} ms  max {max(values):7.1f} ms  "
            f"({verdict} p99 <= {TARGET_P99_MS:.0f} ms)")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000,
                        help="records/s (default 1000)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="how long the program records (default 5)")
    parser.add_argument("--poll-ms", type=int, default=50,
                        help="the session's poll timeout (default 50, as "
                        "TraceSession.run)")
    parser.add_argument("--window-ms", type=float,
                        help="a reorder window other than the default (what-if)")
    parser.add_argument("--margin-ms", type=float,
                        help="a reorder margin other than the default (what-if)")
    arguments = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("latency_bench: needs root (BPF)")
        return 0
    print(machine.describe())
    label = machine.cpu_label()
    program = programs.Program("rate_load", (f"-I{programs.PROBES / 'include'}",),
                               (str(programs.core_library(programs.PROBES)),))
    path = programs.build(program)
    from recorder_tracer.decode.reorder import REORDER_MARGIN_NS, REORDER_WINDOW_NS
    window = (arguments.window_ms if arguments.window_ms is not None
              else REORDER_WINDOW_NS / 1e6)
    margin = (arguments.margin_ms if arguments.margin_ms is not None
              else REORDER_MARGIN_NS / 1e6)
    print(f"record timestamp -> controller, rate_load paced at "
          f"{arguments.rate} records/s for {arguments.seconds:g} s "
          f"(reorder margin {margin:g} ms, window {window:g} ms at most, "
          f"poll timeout {arguments.poll_ms} ms)")
    for mode, batch in (("live (trap per record, the default)", False),
                        ("--batch", True)):
        timings = one_mode(path, batch, arguments)
        print(f"{mode}:")
        for line in machine.tagged([describe("received", timings.received),
                                    describe("emitted", timings.emitted)], label):
            print(line)
        print(f"  late      {timings.late} records came after a newer one left")
    print("(received: decoded by the session; emitted: handed to the sink by "
          "the reorder buffer)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
