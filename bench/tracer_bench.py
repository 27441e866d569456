"""Benchmark the tracer: what an armed topic costs per record, and what the
stream carries (`make bench` runs it after the core benchmark).

Builds bench/tracer_bench.c, a program of tight RECORD loops, one topic per
way of tracing it. Every tracer stays attached to its own topic while the
cases alternate in rounds of short samples, so noise hits all of them alike;
the ratios pair samples of the same round. A second process repeats this
with the tracers moved to other topics, to average out code placement. Then
tracer_stream.py measures the stream. A missed target is a result, not an
error: the exit status is 0 unless something fails to build or run.

Examples:
    .venv/bin/python bench/tracer_bench.py               # the full run, ~30 s
    .venv/bin/python bench/tracer_bench.py --processes 1 --rounds 10  # quick
    .venv/bin/python bench/tracer_bench.py --no-stream   # per-record costs only
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import machine
import programs
import tracer_report
from tracer_report import CASES, STRING_CASE, CostResults, Load, check, label

TOPICS = [f"t{index}" for index in range(8)]   # tracer_bench.c's armable topics
COLD = "cold"                                  # never armed
STRING_TOPIC = "str"
BPFTRACE = {"count": "@ = count();", "tid": "@[tid] = count();"}
# The empty program attached as bcc and bpftrace attach, through a perf event
# (arm.py's fallback), while arm.py uses a uprobe_multi link where it can.
PERF_EMPTY = "empty_perf"


def tracer_bench_program() -> programs.Program:
    return programs.Program("tracer_bench", (f"-I{programs.PROBES / 'include'}",),
                            (str(programs.core_library(programs.PROBES)), "-lpthread"))


class Target:
    """A running tracer_bench, pinned to one CPU, driven line by line."""

    def __init__(self, path: Path, cpu: int) -> None:
        self.path = str(path)
        self.process = subprocess.Popen([self.path, str(cpu)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        ready = self.process.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise RuntimeError(f"tracer_bench did not start: {ready}")
        self.pid = int(ready[1])
        self.made: dict[str, int] = defaultdict(int)    # records per topic
        from recorder_tracer.target import notes
        self.sites: dict[str, list[Any]] = defaultdict(list)
        for probe in notes.probes_in_file(self.path):
            if probe.provider == "recorder":
                self.sites[probe.name].append(probe)

    def command(self, line: str) -> tuple[int, int, int]:
        """Run one command; returns (records, wall ns, CPU ns)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().split()
        if len(answer) != 3:
            raise RuntimeError(f"tracer_bench: {line!r} answered {answer}")
        records, wall, cpu = map(int, answer)
        self.made[line.split()[1]] += records
        return records, wall, cpu

    def sample(self, topic: str, ms: int) -> float:
        """ns per record over one sample of `ms` ms."""
        records, wall, _ = self.command(f"sample {topic} {ms}")
        return wall / records

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("exit\n")
            self.process.stdin.flush()
        self.process.wait(timeout=10)


class Bpftrace:
    """bpftrace -p PID on one topic's probe, with one program."""

    def __init__(self, target: Target, topic: str, program: str) -> None:
        self.target = target
        self.topic = topic
        self.process = subprocess.Popen(
            ["bpftrace", "-p", str(target.pid), "-e",
             f"usdt:{target.path}:recorder:{topic} {{ {program} }}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def attached(self) -> bool:
        """Whether bpftrace has a uprobe on every site of its topic."""
        if self.process.poll() is not None:
            raise RuntimeError(f"bpftrace exited: {self.process.communicate()[0]}")
        listing = subprocess.run(["bpftool", "perf", "list", "-j"], capture_output=True,
                                 text=True, check=True).stdout
        mine = [entry for entry in json.loads(listing or "[]")
                if entry.get("pid") == self.process.pid]
        return len(mine) >= len(self.target.sites[self.topic])

    def stop(self) -> int | None:
        """Stop it; returns the total it counted."""
        self.process.send_signal(signal.SIGINT)
        output, _ = self.process.communicate(timeout=30)
        counts = re.findall(r"^@(?:\[\d+\])?: (\d+)$", output, re.MULTILINE)
        return sum(map(int, counts)) if counts else None


@dataclass
class Tracers:
    """The loaded BPF programs, shared by the processes measured."""

    empty_fd: int
    empty: Any
    harvesters: dict[str, Any]

    @classmethod
    def load(cls) -> Tracers:
        import bcc

        from recorder_tracer.kernel.arm import register_bcc_program
        from recorder_tracer.kernel.harvest import Harvester
        empty = bcc.BPF(text=b"int empty(void *ctx) { return 0; }")
        return cls(
            empty_fd=register_bcc_program(
                empty, empty.load_func(b"empty", bcc.BPF.KPROBE)),
            empty=empty,
            harvesters={
                "metrics": Harvester(stream=False, flight=False, metrics=True),
                "flight": Harvester(stream=False, flight=True, metrics=True),
                "stream": Harvester(stream=True, flight=True, metrics=True),
            },
        )

    def close(self) -> None:
        for harvester in self.harvesters.values():
            harvester.close()
        self.empty.cleanup()


class CountingConsumer:
    """A Stream that only counts, polled in a thread while cases run."""

    def __init__(self, harvester: Any, pages_per_cpu: int) -> None:
        from recorder_tracer.kernel.stream import Stream
        self.count = 0
        self.stream = Stream(harvester, on_batch=self._on_batch,
                             pages_per_cpu=pages_per_cpu)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _on_batch(self, cpu: int, batch: Any) -> None:
        self.count += len(batch)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.stream.poll(timeout_ms=20)

    def stop(self) -> list[Any]:
        self._stop.set()
        self._thread.join()
        self.stream.drain()
        summary = self.stream.summary()
        self.stream.close()
        return summary


def attach_all(target: Target, program_fd: int, topic: str,
               perf_events: bool = False) -> list[Any]:
    """Attach to every site of `topic`; `perf_events`: as bcc does."""
    from recorder_tracer.kernel import arm
    forced = {arm.NO_UPROBE_MULTI: "1"} if perf_events else {}
    with mock.patch.dict(os.environ, forced):
        return [arm.attach_uprobe(program_fd, target.path, site.file_offset,
                                  target.pid, site.semaphore_offset)
                for site in target.sites[topic]]


def measure_process(path: Path, shift: int, arguments: argparse.Namespace,
                    results: CostResults, load: Load) -> None:
    """One process: its no-tracer cost, then every case in rounds. The
    tracers are loaded afresh, so their counts are this process's."""
    from recorder_tracer.kernel import arm
    tracers = Tracers.load()
    target = Target(path, arguments.cpu)
    attachments: list[Any] = []
    bpftraces: dict[str, Bpftrace] = {}
    consumer: CountingConsumer | None = None
    topic_of = {case.name: TOPICS[(index + shift) % len(TOPICS)]
                for index, case in enumerate(CASES)}
    topic_of[STRING_CASE.name] = STRING_TOPIC
    topic_of[PERF_EMPTY] = TOPICS[(len(CASES) + shift) % len(TOPICS)]

    def ours() -> list[int]:
        return [target.pid, *(bpftrace.process.pid for bpftrace in bpftraces.values())]

    try:
        with load.window(ours):
            for topic in (COLD, *topic_of.values()):
                target.sample(topic, arguments.sample_ms)        # warm up
            for _ in range(arguments.rounds):
                results.ns["unarmed"].append(target.sample(COLD, arguments.sample_ms))
        if not arguments.no_bpftrace:
            bpftraces = {name: Bpftrace(target, topic_of[name], program)
                         for name, program in BPFTRACE.items()}
        attachments += attach_all(target, tracers.empty_fd, topic_of["empty"])
        note = f"kernel/arm.py attached through: {attachments[0].method.value}"
        if note not in results.checks:
            results.checks.append(note)
        attachments += attach_all(target, tracers.empty_fd, topic_of[PERF_EMPTY],
                                  perf_events=True)
        for name, harvester in tracers.harvesters.items():
            attachments += attach_all(target, harvester.program_fd, topic_of[name])
        attachments += attach_all(target, tracers.harvesters["flight"].program_fd,
                                  topic_of[STRING_CASE.name])
        consumer = CountingConsumer(tracers.harvesters["stream"],
                                    arguments.stream_pages)
        deadline = time.monotonic() + 60
        while not all(bpftrace.attached() for bpftrace in bpftraces.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("bpftrace did not attach within 60 s")
            time.sleep(0.1)
        made_armed = dict(target.made)
        cases = [case.name for case in CASES if case.name in topic_of
                 and (case.name not in BPFTRACE or bpftraces)] + [STRING_CASE.name,
                                                                  PERF_EMPTY]
        with load.window(ours):
            for topic in (COLD, *(topic_of[case] for case in cases)):
                target.sample(topic, arguments.sample_ms)        # warm up, armed
            for _ in range(arguments.rounds):
                sample_round(target, topic_of, cases, arguments.sample_ms, results)
        # Proof of work: every record of an armed topic reached its tracer.
        made = {case: target.made[topic_of[case]] - made_armed.get(topic_of[case], 0)
                for case in cases}
        for name, bpftrace in bpftraces.items():
            check(results, name, label(name), bpftrace.stop(), made[name])
        bpftraces.clear()
        summary = consumer.stop()
        consumer = None
        check_harvest(results, tracers, target, topic_of, made, summary)
    finally:
        if consumer is not None:
            consumer.stop()
        for bpftrace in bpftraces.values():
            bpftrace.process.kill()
            bpftrace.process.wait()
        for attachment in attachments:
            arm.detach(attachment)
        target.close()
        tracers.close()


def sample_round(target: Target, topic_of: dict[str, str], cases: list[str],
                 milliseconds: int, results: CostResults) -> None:
    """One sample of the unarmed topic and of every case, back to back."""
    results.ns["cold"].append(target.sample(COLD, milliseconds))
    sample = {case: target.sample(topic_of[case], milliseconds) for case in cases}
    for case, ns in sample.items():
        results.ns[case].append(ns)
        for reference in ("empty", "count", PERF_EMPTY):
            if reference in sample:
                results.ratios[(case, reference)].append(ns / sample[reference])


def render_perf_reference(results: CostResults) -> list[str]:
    """The empty program attached as bcc attaches it, and our cases against
    it (the table's empty program is attached by kernel/arm.py, as ours)."""
    values = results.ns.get(PERF_EMPTY)
    if not values:
        return []
    ratios = ", ".join(
        f"{case} {ratio:.3f}x" for case in ("empty", "metrics", "flight")
        if (ratio := results.ratio(case, PERF_EMPTY)) is not None)
    return [f"{'empty bcc program, perf event':<{tracer_report.LABEL}} "
            f"{statistics.median(values):>7.1f} {min(values):>7.1f} "
            f"{max(values):>7.1f}",
            "(attached as bcc and bpftrace attach, not through a uprobe_multi link;",
            f" medians of per-round ratios to it: {ratios})"]


def check_harvest(results: CostResults, tracers: Tracers, target: Target,
                  topic_of: dict[str, str], made: dict[str, int],
                  stream_summary: list[Any]) -> None:
    """The harvest programs' own counts against the records made."""
    from recorder_tracer.target.memory import read_maps
    base = min(m.start - m.offset for m in read_maps(target.pid)
               if m.path == str(Path(target.path).resolve()))
    for name in ("metrics", "flight", "stream", STRING_CASE.name):
        harvester = tracers.harvesters["flight" if name == STRING_CASE.name else name]
        addresses = {base + site.address for site in target.sites[topic_of[name]]}
        seen = sum(count for key, count in harvester.site_counts().items()
                   if key.pid == target.pid and key.address in addresses)
        check(results, name, f"{label(name)}, site counts", seen, made[name])
    received = sum(cpu.received for cpu in stream_summary)
    lost = sum(cpu.lost for cpu in stream_summary)
    balanced = all(cpu.balanced for cpu in stream_summary)
    check(results, "stream", f"{label('stream')}: received {received} + lost "
          f"{lost}, per CPU {'exact' if balanced else 'NOT exact'}; produced",
          sum(cpu.produced for cpu in stream_summary) if balanced else None,
          made["stream"])


# -- running ------------------------------------------------------------------


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--processes", type=int, default=2,
                        help="processes measured, tracers moved between them "
                        "(default 2)")
    parser.add_argument("--rounds", type=int, default=30,
                        help="rounds of every case per process (default 30)")
    parser.add_argument("--sample-ms", type=int, default=3,
                        help="duration of one sample (default 3)")
    parser.add_argument("--stream-ms", type=int, default=1000,
                        help="duration of one stream run (default 1000)")
    parser.add_argument("--stream-pages", type=int, default=2048,
                        help="pages of each CPU's stream ring (default 2048: 8 MiB)")
    parser.add_argument("--paced-rate", type=int, default=200_000,
                        help="records per second of the paced run (default 200000)")
    parser.add_argument("--no-bpftrace", action="store_true",
                        help="skip the bpftrace comparison")
    parser.add_argument("--no-stream", action="store_true",
                        help="skip the stream runs")
    return parser.parse_args(argv)


def unavailable() -> str | None:
    """Why the tracer benchmark cannot run here, or None."""
    if os.geteuid() != 0:
        return "it needs root (BPF and uprobes)"
    try:
        import bcc  # noqa: F401

        import recorder_tracer  # noqa: F401
    except ImportError as error:
        return f"{error}; run vagrant/provision.sh"
    return None


def main(argv: list[str]) -> int:
    """Run the tracer benchmark; 0 unless something fails to build or run."""
    arguments = parse_arguments(argv)
    started = time.monotonic()
    reason = unavailable()
    if reason is not None:
        print(f"Tracer benchmark skipped: {reason}.")
        return 0
    cpus = sorted(os.sched_getaffinity(0))
    arguments.cpu = cpus[0]
    if len(cpus) > 1:       # the controller runs beside the traced program
        os.sched_setaffinity(0, set(cpus[1:]))
    if arguments.no_bpftrace is False and not _has("bpftrace", "bpftool"):
        print("bpftrace or bpftool not found: bpftrace rows skipped")
        arguments.no_bpftrace = True
    print(f"Benchmarking the tracer: {arguments.processes} processes x "
          f"{arguments.rounds} rounds of {arguments.sample_ms} ms samples per case;")
    print(f"stream runs of {arguments.stream_ms} ms, rings of "
          f"{arguments.stream_pages} pages per CPU.")
    try:
        path = programs.build(tracer_bench_program())
        results = CostResults()
        load = Load()
        for process in range(arguments.processes):
            measure_process(path, 3 * process, arguments, results, load)
        runs = None
        if not arguments.no_stream:
            import tracer_stream
            target = Target(path, arguments.cpu)
            try:
                with load.window(lambda: [target.pid]):
                    runs = tracer_stream.measure(target, arguments.stream_ms,
                                                 arguments.paced_rate,
                                                 arguments.stream_pages)
            finally:
                target.close()
    except programs.BuildError as error:
        print(f"bench: build failed: {error}", file=sys.stderr)
        return 1
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        print(f"bench: tracer benchmark failed: {error}", file=sys.stderr)
        return 1
    print()
    for line in machine.tagged(tracer_report.render_costs(results)):
        print(line)
    for line in machine.tagged(render_perf_reference(results)):
        print(line)
    if runs is not None:
        print()
        for line in machine.tagged(tracer_stream.render(runs)):
            print(line)
    print()
    for line in machine.tagged(tracer_report.render_verdicts(
            tracer_report.judge(results, runs, arguments.paced_rate))):
        print(line)
    print()
    for line in results.checks:
        print(line)
    print(load.describe())
    print(f"took {time.monotonic() - started:.1f} s")
    return 0


def _has(*commands: str) -> bool:
    import shutil
    return all(shutil.which(command) for command in commands)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
