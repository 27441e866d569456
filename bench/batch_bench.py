"""Benchmark the batch harvest (tracer/bpf/batch.c) against the per-record
trap, on the same program and in the same run.

1. Cost to the traced program, flat out: tracer_bench.c records in tight
   loops, one topic per case, in rounds of short samples (as
   tracer_bench.py): no tracer; an armed topic under the batch harvest
   (read by a BatchStream in a thread); bpftrace `@ = count()` on another
   topic. Overhead = case minus no tracer; the ratio pairs samples of one
   round. Flat out, the program outruns every reader: the batch harvest
   then copies the newest ring-full per tick and counts the rest lost.
2. Cost per harvested record: with kernel.bpf_stats_enabled, the time the
   batch programs ran (in the traced process's context), over the entries
   they streamed while the program records paced below its ring's capacity
   per tick, so that every record is harvested.
3. Cost to everybody else: the sched_switch program's mean run time for a
   switch of a process that is not traced.
4. Delivery: the program paced at 500 k records/s for 2 s, and two threads
   on both CPUs as fast as they can: received + lost = produced, exactly.

    sudo .venv/bin/python bench/batch_bench.py            # ~20 s
    sudo .venv/bin/python bench/batch_bench.py --rounds 10 --no-bpftrace
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import machine
import programs
from tracer_bench import Bpftrace, Target, tracer_bench_program

NONE, BATCH, COUNT = "t0", "t1", "t2"       # tracer_bench.c topics, one a case
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


class Consumer:
    """A BatchStream read in a thread, counting what it delivers."""

    def __init__(self, harvester: Any, pages: int) -> None:
        from recorder_tracer.kernel.batch_stream import BatchStream
        self.count = 0
        self.stream = BatchStream(harvester, self._on_record, pages_per_cpu=pages)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _on_record(self, cpu: int, record: Any) -> None:
        self.count += 1

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


def program_stats(harvester: Any) -> dict[str, tuple[int, int]]:
    """(run_time_ns, run_cnt) of each loaded program, from its fd's fdinfo."""
    found = {}
    for name, function in harvester.bpf.funcs.items():
        try:
            text = Path(f"/proc/self/fdinfo/{function.fd}").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in text.splitlines()
                      if ":\t" in line)
        found[name.decode()] = (int(fields.get("run_time_ns", 0)),
                                int(fields.get("run_cnt", 0)))
    return found


def arm_topic(harvester: Any, target: Target, topic: str) -> None:
    from recorder_tracer.target.memory import ProcessImage
    image = ProcessImage.of(target.pid)
    base = image.topic_count()      # before the list: BatchHarvester.arm
    wanted = [t for t in image.topics() if t.name == topic]
    assert harvester.arm(target.pid, image, wanted, base), "no registry"


def flat_out(target: Target, arguments: argparse.Namespace) -> dict[str, list[float]]:
    """ns per record of each case, per round."""
    from recorder_tracer.kernel.batch import BatchHarvester
    harvester = BatchHarvester()
    consumer = Consumer(harvester, 256)
    bpftrace = (None if arguments.no_bpftrace
                else Bpftrace(target, COUNT, "@ = count();"))
    results: dict[str, list[float]] = {"none": [], "batch": [], "count": []}
    try:
        arm_topic(harvester, target, BATCH)
        if bpftrace is not None:
            deadline = time.monotonic() + 60
            while not bpftrace.attached():
                if time.monotonic() > deadline:
                    raise RuntimeError("bpftrace did not attach within 60 s")
                time.sleep(0.1)
        cases = {"none": NONE, "batch": BATCH}
        if bpftrace is not None:
            cases["count"] = COUNT
        for topic in cases.values():
            target.sample(topic, arguments.sample_ms)
        for _ in range(arguments.rounds):
            for name, topic in cases.items():
                results[name].append(target.sample(topic, arguments.sample_ms))
        losses = harvester.losses()
        summary = consumer.stop()
        made = target.made[BATCH]
        loss = losses.get((target.pid, _topic_id(target, BATCH)))
        print(f"flat out, batch topic: {made} made since armed; streamed "
              f"{loss.streamed if loss else 0}, lost {loss.lost if loss else 0}; "
              f"account {'exact' if all(c.balanced for c in summary) else 'BROKEN'}")
    finally:
        if bpftrace is not None:
            counted = bpftrace.stop()
            print(f"bpftrace @ = count(): {counted} of {target.made[COUNT]} records")
        harvester.close()
    return results


def _topic_id(target: Target, topic: str) -> int:
    from recorder_tracer.target.memory import ProcessImage
    return next(t.id for t in ProcessImage.of(target.pid).topics() if t.name == topic)


def harvested_cost(target: Target, rate: int,
                   ms: int) -> tuple[float, int, int, int, int]:
    """(ns of BPF per harvested record, streamed, lost, harvests, switches
    that harvested nothing) with the program paced at `rate`."""
    from recorder_tracer.kernel.batch import BatchHarvester
    previous = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")
    harvester = BatchHarvester()
    consumer = Consumer(harvester, 1024)
    try:
        arm_topic(harvester, target, BATCH)
        before = program_stats(harvester)
        counts_before = harvester.counters()
        target.command(f"paced {BATCH} {rate} {ms}")
        time.sleep(0.05)
        after = program_stats(harvester)
        counts = harvester.counters()
        losses = harvester.losses()
        consumer.stop()
    finally:
        BPF_STATS.write_text(previous)
        harvester.close()
    spent = sum(after[name][0] - before.get(name, (0, 0))[0] for name in after)
    streamed = sum(c["streamed"] for c in counts) - sum(c["streamed"]
                                                         for c in counts_before)
    harvests = sum(c["harvests"] for c in counts) - sum(c["harvests"]
                                                        for c in counts_before)
    lost = sum(loss.lost for loss in losses.values())
    # The switches of processes not traced ran meanwhile: counted apart.
    switch = "raw_tracepoint__sched_switch"
    switches = after[switch][1] - before.get(switch, (0, 0))[1]
    return spent / max(1, streamed), streamed, lost, harvests, switches - harvests


def untraced_switch_cost(seconds: float = 1.0) -> tuple[float, int]:
    """(mean ns, runs) of the sched_switch program while nothing is armed:
    what every context switch on the machine pays while a trace runs."""
    from recorder_tracer.kernel.batch import BatchHarvester
    previous = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")
    harvester = BatchHarvester()
    try:
        switch = "raw_tracepoint__sched_switch"
        before = program_stats(harvester)[switch]
        time.sleep(seconds)
        after = program_stats(harvester)[switch]
    finally:
        BPF_STATS.write_text(previous)
        harvester.close()
    runs = after[1] - before[1]
    return (after[0] - before[0]) / max(1, runs), runs


def delivery(rate: int, seconds: float, pages: int) -> str:
    """The stream's account with bench/rate_load.c paced at `rate`."""
    import subprocess

    from recorder_tracer.kernel.batch import BatchHarvester
    from recorder_tracer.target.memory import ProcessImage
    program = programs.Program("rate_load", (f"-I{programs.PROBES / 'include'}",),
                               (str(programs.core_library(programs.PROBES)),))
    path = programs.build(program)
    harvester = BatchHarvester()
    consumer = Consumer(harvester, pages)
    process = subprocess.Popen([str(path), str(rate), str(seconds)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdin is not None
    pid = int(process.stdout.readline().split()[1])
    image = ProcessImage.of(pid)
    base = image.topic_count()
    harvester.arm(pid, image, [t for t in image.topics() if t.name == "load"], base)
    started = time.monotonic()
    process.stdin.write("go\n")
    process.stdin.flush()
    made_line = process.stdout.readline().split()
    process.wait()
    took = time.monotonic() - started
    time.sleep(0.05)
    summary = consumer.stop()
    harvester.close()
    made = int(made_line[-1]) if made_line else -1
    received = consumer.count
    lost = sum(c.lost for c in summary)
    exact = all(c.balanced for c in summary) and received + lost == made
    return (f"paced {rate // 1000} k/s for {seconds:g} s: made {made}, received "
            f"{received}, lost {lost} in {took:.2f} s; account "
            f"{'exact' if exact else 'BROKEN'}")


def two_threads(path: Path, ms: int) -> str:
    """Two threads on both CPUs as fast as they can on the batch topic."""
    from recorder_tracer.kernel.batch import BatchHarvester
    target = Target(path, 0)
    harvester = BatchHarvester()
    consumer = Consumer(harvester, 1024)
    try:
        arm_topic(harvester, target, BATCH)
        records, _, _ = target.command(f"flood {BATCH} {ms}")
        time.sleep(0.05)
        losses = harvester.losses()
        summary = consumer.stop()
    finally:
        harvester.close()
        target.close()
    loss = next(iter(losses.values()))
    exact = loss.produced == records and all(c.balanced for c in summary)
    return (f"2 threads, both CPUs, {ms} ms: made {records}, streamed "
            f"{loss.streamed}, lost {loss.lost}; account "
            f"{'exact' if exact else 'BROKEN'}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--sample-ms", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--paced-rate", type=int, default=100_000)
    parser.add_argument("--no-bpftrace", action="store_true")
    arguments = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("batch_bench: needs root (BPF)")
        return 0
    print(machine.describe())
    path = programs.build(tracer_bench_program())
    target = Target(path, arguments.cpu)
    try:
        results = flat_out(target, arguments)
        per_record, streamed, lost, harvests, idle_switches = harvested_cost(
            target, arguments.paced_rate, 1000)
    finally:
        target.close()
    none = statistics.median(results["none"])
    print(f"\nRECORD, 4 args; CASE             NS/REC  (median of {arguments.rounds})")
    for name, values in results.items():
        if values:
            print(f"  {name:<28} {statistics.median(values):8.1f}")
    per_switch, switches = untraced_switch_cost()
    # Without the switches of other processes that ran meanwhile (each
    # costs what an untraced switch costs).
    own = max(0.0, per_record - idle_switches * per_switch / max(1, streamed))
    count_overhead = None
    if results["count"]:
        ratios = [(b - n) / (c - n) for n, b, c in
                  zip(results["none"], results["batch"], results["count"], strict=True)]
        count_overhead = statistics.median(results["count"]) - none
        print(f"flat out: batch overhead / bpftrace count() overhead = "
              f"{statistics.median(ratios):.3f}x (median of per-round ratios)")
    print(f"every record harvested (paced {arguments.paced_rate // 1000} k/s, "
          f"streamed {streamed}, lost {lost}, {harvests} harvests):")
    for label, value in (("all BPF time", per_record),
                         ("less other processes' switches", own)):
        ratio = (f" = {value / count_overhead:.3f}x bpftrace count()'s "
                 f"{count_overhead:.0f} ns" if count_overhead else "")
        print(f"  {label}: {value:.1f} ns per record{ratio}")
    print("(the program is paced by the wall clock: after a preemption it "
          "catches up in a burst, which a 1024-entry ring may not hold until "
          "the next harvest: those are the lost)")
    print(f"a context switch while nothing is armed: {per_switch:.0f} ns of BPF "
          f"(mean of {switches} in 1 s)")
    print(delivery(500_000, 2, 1024))
    print(two_threads(path, 500))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main(sys.argv[1:]))
