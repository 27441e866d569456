"""Benchmark the Python API: ns per `record()` next to `logging` (`make bench`
runs it after the core benchmark).

A worker process (this script with --worker) times loops of calls, every
case once per round, interleaved, so noise hits all cases alike: a topic
turned off (`trace_set("/topic")`), a topic recording in-process, a topic
armed by a real tracer session (the one `recorder trace -p PID` runs, in
this process: the probe fires, BPF copies the entry, the controller decodes
it), `logging.Logger.debug` below the logger's level and `.info` into a
NullHandler. Figures are medians over rounds of ns per call, loop included
(the "loop" row: the loop and a trivial C call); ratios pair samples of the same round.
A missed target is a result, not an error.

Examples:
    .venv/bin/python bench/py_bench.py                 # ~15 s
    .venv/bin/python bench/py_bench.py --rounds 5 --calls 20000   # quick
    .venv/bin/python bench/py_bench.py --no-tracer     # without the armed case
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import machine

FORMAT = "sent %d bytes to %s"
HOST = "example.org"
# (case, what its row says)
CASES = [
    ("loop", "loop + a trivial C call: slice()"),
    ("disabled", "record(), topic off"),
    ("enabled", "record(), in-process"),
    ("armed", "record(), armed by a tracer session"),
    ("log_debug", "logging .debug, below the level"),
    ("log_info", "logging .info, to a NullHandler"),
]
ARMED_TOPIC = "py_bench_armed"


# -- the worker ---------------------------------------------------------------


def worker_calls() -> dict[str, Callable[..., Any]]:
    """The callable each case times, with FORMAT and two arguments."""
    import recorder
    off = recorder.Recorder("py_bench_off", 1024, "a topic turned off")
    on = recorder.Recorder("py_bench_on", 1024, "a topic recording in-process")
    armed = recorder.Recorder(ARMED_TOPIC, 1024, "a topic a tracer arms")
    recorder.trace_set("/py_bench_off")
    log = logging.getLogger("py_bench")
    log.propagate = False
    log.addHandler(logging.NullHandler())
    log.setLevel(logging.INFO)
    return {"loop": slice, "disabled": off.record, "enabled": on.record,
            "armed": armed.record, "log_debug": log.debug, "log_info": log.info}


def time_calls(call: Callable[..., Any], count: int) -> float:
    """ns per call of `call(FORMAT, i, HOST)` over `count` calls."""
    started = time.perf_counter_ns()
    for index in range(count):
        call(FORMAT, index, HOST)
    return (time.perf_counter_ns() - started) / count


def worker(count: int) -> None:
    """Print "ready PID"; then per stdin line a JSON round of ns per case
    (`loop` calls slice(FORMAT, i, HOST): the loop and one C call)."""
    calls = worker_calls()
    for call in calls.values():
        time_calls(call, count)          # warm up: formats, places, shards
    print(f"ready {os.getpid()}", flush=True)
    for _line in sys.stdin:
        print(json.dumps({case: time_calls(call, count)
                          for case, call in calls.items()}), flush=True)


# -- the controller -----------------------------------------------------------


class Worker:
    def __init__(self, count: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--calls", str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.pid = int(self.process.stdout.readline().split()[1])

    def round(self) -> dict[str, float]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)


class Tracing:
    """A TraceSession on the worker's armed topic, polled in a thread."""

    def __init__(self, pid: int) -> None:
        from recorder_tracer.decode.spec import TopicSpec
        from recorder_tracer.session.loop import TraceOptions, TraceSession
        self.received = 0
        self.session = TraceSession(
            TraceOptions(pids=[pid], spec=TopicSpec.parse(ARMED_TOPIC)),
            self._count, lambda report: None)
        self.session.start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _count(self, record: Any) -> None:
        self.received += 1

    def _loop(self) -> None:
        while not self._stop.is_set() and self.session.poll(timeout_ms=20):
            pass

    def armed(self, pid: int) -> bool:
        from recorder_tracer.target.dynamic import read_armed
        from recorder_tracer.target.memory import ProcessImage
        topics = [t for t in ProcessImage.of(pid).topics() if t.name == ARMED_TOPIC]
        return bool(topics) and bool(read_armed(pid, topics[0]))

    def stop(self) -> tuple[int, int, int]:
        """Detach and drain; (records produced, decoded, lost)."""
        self._stop.set()
        self._thread.join()
        self.session.close()
        summaries = self.session.summaries()
        return (sum(cpu.produced for cpu in summaries), self.received,
                sum(cpu.lost for cpu in summaries))


def measure(arguments: argparse.Namespace) -> tuple[dict[str, list[float]], list[str]]:
    samples: dict[str, list[float]] = defaultdict(list)
    notes: list[str] = []
    worker = Worker(arguments.calls)
    tracing: Tracing | None = None
    try:
        if not arguments.no_tracer:
            tracing = Tracing(worker.pid)
            deadline = time.monotonic() + 60
            while not tracing.armed(worker.pid):
                if time.monotonic() > deadline:
                    raise RuntimeError("the tracer did not arm the topic in 60 s")
                time.sleep(0.05)
        worker.round()                                  # warm up, armed
        for _ in range(arguments.rounds):
            for case, ns in worker.round().items():
                samples[case].append(ns)
        if tracing is not None:
            produced, received, lost = tracing.stop()
            tracing = None
            made = (arguments.rounds + 1) * arguments.calls
            notes.append(f"armed topic: {made} records made, {produced} reached "
                         f"the tracer's BPF program, {received} were decoded by "
                         f"the session, {lost} lost (a full stream drops records; "
                         f"the program never waits)")
    finally:
        if tracing is not None:
            tracing.stop()
        worker.close()
    if arguments.no_tracer:
        samples.pop("armed", None)
    return samples, notes


def paired(samples: dict[str, list[float]], case: str, reference: str) -> float | None:
    """Median over rounds of case / reference."""
    if case not in samples or reference not in samples:
        return None
    return statistics.median(a / b for a, b in zip(samples[case], samples[reference],
                                                   strict=True))


def render(samples: dict[str, list[float]]) -> list[str]:
    lines = [f"{'Python API, ns per call':<44} {'MEDIAN':>7} {'MIN':>7} {'MAX':>7}"]
    for case, text in CASES:
        values = samples.get(case)
        if values:
            lines.append(f"{text:<44} {statistics.median(values):>7.1f} "
                         f"{min(values):>7.1f} {max(values):>7.1f}")
        else:
            lines.append(f"{text:<44} {'-':>7}")
    median = {case: statistics.median(v) for case, v in samples.items()}
    ratio = paired(samples, "enabled", "log_info")
    targets = [
        ("disabled <= 40 ns", median.get("disabled"), 40.0, "ns"),
        ("in-process <= 150 ns", median.get("enabled"), 150.0, "ns"),
        ("in-process <= 0.1x logging .info", ratio, 0.1, "x"),
    ]
    lines.append("")
    for name, value, limit, unit in targets:
        if value is None:
            lines.append(f"{'N/A':<5} {name}: not measured")
        else:
            shown = f"{value:.1f} ns" if unit == "ns" else f"{value:.3f}x"
            lines.append(f"{'PASS' if value <= limit else 'FAIL':<5} {name}: {shown}")
    if "armed" in samples:
        lines.append(f"armed / in-process: {paired(samples, 'armed', 'enabled'):.2f}x;"
                     f" in-process / logging .debug (disabled): "
                     f"{paired(samples, 'enabled', 'log_debug'):.2f}x")
    return lines


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=15,
                        help="rounds of every case (default 15)")
    parser.add_argument("--calls", type=int, default=50_000,
                        help="calls per case per round (default 50000)")
    parser.add_argument("--no-tracer", action="store_true",
                        help="skip the case armed by a tracer session")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    arguments = parse_arguments(argv)
    if arguments.worker:
        worker(arguments.calls)
        return 0
    print(f"Benchmarking the Python API: {arguments.rounds} rounds of "
          f"{arguments.calls} calls per case.")
    started = time.monotonic()
    samples, notes = measure(arguments)
    print()
    for line in machine.tagged(render(samples)):
        print(line)
    for note in notes:
        print(note)
    print(f"took {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
