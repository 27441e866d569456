"""Benchmark the recorder core against clock_gettime and LTTng-UST (`make bench`).

Builds bench/record_bench.c and bench/lttng_bench.c into build/bench/, runs
them in alternation (several processes, each running interleaved rounds of
every case), and prints a table of median ns per operation, the ratios, and
one PASS/FAIL line per target. A missed target is a result, not an error:
the exit status is 0 unless a program fails to build or run.

Examples:
    make bench                          # the core, the tracer, the daemon, ~80 s
    .venv/bin/python bench/run.py --processes 1 --rounds 5   # a quick look
    .venv/bin/python bench/run.py --no-lttng   # without the LTTng comparison
    .venv/bin/python bench/run.py --core /tmp/x/probes   # try a hot.h change
    .venv/bin/python bench/run.py --no-tracer  # the core only (tracer_bench.py)
    .venv/bin/python bench/run.py --no-python  # without the Python API (py_bench.py)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import lttng_session
import machine
import programs
import report


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--processes", type=int, default=3,
                        help="runs of each program, alternated (default 3)")
    parser.add_argument("--rounds", type=int, default=11,
                        help="rounds of every case per process (default 11)")
    parser.add_argument("--sample-ms", type=int, default=10,
                        help="duration of one sample (default 10)")
    parser.add_argument("--no-lttng", action="store_true",
                        help="skip the LTTng-UST comparison")
    parser.add_argument("--no-tracer", action="store_true",
                        help="skip the tracer benchmark (bench/tracer_bench.py)")
    parser.add_argument("--no-python", action="store_true",
                        help="skip the Python API benchmark (bench/py_bench.py)")
    parser.add_argument("--core", type=Path, default=programs.PROBES,
                        metavar="DIR",
                        help="benchmark the core in DIR, a copy of probes/ "
                        "(default: this tree's)")
    return parser.parse_args(argv)


def first_cpu() -> int:
    """The first CPU this process may run on: where single-thread cases run."""
    return min(os.sched_getaffinity(0))


def run(program: Path, arguments: argparse.Namespace, load: machine.Load) -> str:
    """Run one benchmark program; return its JSON-lines output."""
    command = [str(program), str(arguments.rounds), str(arguments.sample_ms),
               str(first_cpu())]
    before = machine.Snapshot.now()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    load.add(before, machine.Snapshot.now())
    if result.stderr:
        sys.stderr.write(result.stderr)
    return result.stdout


def lttng_check(results: report.Results, session: lttng_session.Session) -> None:
    """Mark the LTTng cases unmeasured unless the program saw `on` enabled
    and `off` disabled (otherwise the figures are not what they claim)."""
    check = results.checks.get("lttng", {})
    if check.get("on_enabled") != 1:
        results.missing["lttng_on"] = "recorder_bench:on was not enabled"
    if check.get("off_enabled") != 0:
        results.missing["lttng_off"] = "recorder_bench:off was enabled"
    if not session.available:
        for case in report.LTTNG_CASES:
            results.missing[case] = f"LTTng-UST: {session.error}"


def measure(arguments: argparse.Namespace, results: report.Results) -> list[str]:
    """Build and run everything; return notes to print under the table."""
    notes: list[str] = []
    record_bench = programs.build(programs.record_bench(arguments.core))
    lttng_bench: Path | None = None
    skip = "skipped (--no-lttng)" if arguments.no_lttng else ""
    if skip:
        results.skipped.update(report.LTTNG_CASES)
    if not skip:
        try:
            lttng_bench = programs.build(programs.lttng_bench())
        except programs.BuildError as error:
            skip = "the LTTng-UST benchmark did not build"
            notes.append(f"{skip}: {error}")
    load = machine.Load()
    with lttng_session.snapshot_session(skip) as session:
        for _ in range(arguments.processes):
            results.add_output(run(record_bench, arguments, load))
            if lttng_bench and session.available:
                output = run(lttng_bench, arguments, load)
                if not report.tracepoint_enabled(output) and session.revive():
                    output = run(lttng_bench, arguments, load)
                results.add_output(output)
        if session.available:
            notes.append(f"LTTng snapshot after the runs: {session.snapshot_events()}")
    lttng_check(results, session)
    notes.extend(session.notes)
    notes.append(records_check(results))
    notes.append(load.describe())
    return notes


def records_check(results: report.Results) -> str:
    """Describe what reached the rings (the last record_bench's count);
    void the cases whose records did not land where they should."""
    records = results.checks.get("records", {})
    written, disabled = records.get("bench"), records.get("bench_off")
    if not written:
        for case, _ in report.ROWS:
            if case.startswith(("record", "threads")):
                results.missing[case] = "no record reached the rings"
    if disabled != 0:
        results.missing["disabled"] = "the disabled topic recorded"
    return (f"records written to topic bench: {written}, to the disabled "
            f"topic: {disabled}; RECORD's clock: {records.get('clock')}; "
            f"ring: {records.get('ring')} entries per CPU")


def main(argv: list[str]) -> int:
    arguments = parse_arguments(argv)
    print(f"Benchmarking the recorder core: {arguments.processes} processes x "
          f"{arguments.rounds} rounds of {arguments.sample_ms} ms samples.")
    print(machine.describe())
    started = time.monotonic()
    results = report.Results()
    try:
        notes = measure(arguments, results)
    except programs.BuildError as error:
        print(f"bench: build failed: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"bench: {error}\n{error.stderr}", file=sys.stderr)
        return 1
    print()
    for line in machine.tagged(report.render(results)):
        print(line)
    print()
    for note in notes:
        print(note)
    print(f"took {time.monotonic() - started:.1f} s")
    if not arguments.no_python:
        print()
        import py_bench
        py_bench.main(["--no-tracer"] if arguments.no_tracer else [])
    if arguments.no_tracer:
        return 0
    print()
    import tracer_bench
    status = tracer_bench.main([])
    print()
    import metrics_bench
    status = metrics_bench.main([]) or status
    print()
    import snapshot_bench
    status = snapshot_bench.main([]) or status
    print()
    import latency_bench
    status = latency_bench.main(["--seconds", "3"]) or status
    print()
    import coverage_bench
    status = coverage_bench.main(["--rounds", "1"]) or status
    print()
    import channel_bench
    status = channel_bench.main(["--clock-seconds", "5"]) or status
    print()
    import trace_rate_bench
    return trace_rate_bench.main([]) or status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
