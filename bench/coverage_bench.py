"""Benchmark coverage: how fast a forked or exec'd process is armed, how
fast records are backfilled and copied, and what a wrapped ring loses.

    .venv/bin/python bench/coverage_bench.py            # about a minute
    .venv/bin/python bench/coverage_bench.py --rounds 1

Cases (session/coverage.py, kernel/bpf/coverage.c):
  fork to armed     build/progs/prefork_server forks workers without exec
                    under -p: ns from the fork (BPF's clock) to the child
                    armed and backfilled
  exec to armed     the same server exec'd again and again under --comm:
                    ns from the exec to armed
  backfill          records/s read back from a live process's rings
  copy at exit      records/s BPF copies from an ending process (300 jobs
                    of 10 records each, exec'd under --all)
  wrapped ring      jobs that make 200 records in a 64-entry ring and end
                    before being armed: produced, received, overwritten
  not named         fork, exec and exit of a process the selection does
                    not name: untraced, under --comm of another name, and
                    under --all
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import machine

REPO = Path(__file__).resolve().parent.parent
PROGS = REPO / "build" / "progs"
sys.path.insert(0, str(REPO / "tests"))

from helpers.tracer import BackgroundSession, Workload  # noqa: E402

from recorder_tracer.decode.spec import TopicSpec  # noqa: E402
from recorder_tracer.session.loop import TraceOptions  # noqa: E402


def serve(argv: list[str]) -> subprocess.Popen[str]:
    server = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert server.stdout is not None and server.stdin is not None
    server.stdout.readline()
    return server


def finish(server: subprocess.Popen[str]) -> None:
    assert server.stdin is not None
    server.stdin.write("go\n")
    server.stdin.flush()
    server.communicate(timeout=120)


def percentiles(values: list[int]) -> str:
    if not values:
        return "no sample"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"median {statistics.median(ordered) / 1e6:.2f} ms, "
            f"p99 {p99 / 1e6:.2f} ms, max {ordered[-1] / 1e6:.2f} ms "
            f"(n={len(ordered)})")


def fork_to_armed(workers: int) -> list[int]:
    server = serve([str(PROGS / "prefork_server"), str(workers), "100", "500"])
    session = BackgroundSession(TraceOptions(pids=[server.pid],
                                             spec=TopicSpec.parse("work")))
    finish(server)
    session.stop()
    assert session.session.coverage is not None
    return session.session.coverage.arm_latency["fork"]


def exec_to_armed(runs: int) -> list[int]:
    session = BackgroundSession(TraceOptions(comms=["prefork_server"],
                                             spec=TopicSpec.parse("work")))
    for _ in range(runs):
        finish(serve([str(PROGS / "prefork_server"), "1", "20", "1000"]))
    session.stop()
    assert session.session.coverage is not None
    return session.session.coverage.arm_latency["exec"]


def backfill_rate() -> tuple[int, float]:
    """Records/s read back from a live process's full rings (workload_ticks'
    flood topic, 1,024 entries per CPU), as arming does."""
    workload = Workload(PROGS)
    try:
        workload.record("flood", 4096)
        session = BackgroundSession(TraceOptions(pids=[workload.pid],
                                                 spec=TopicSpec.parse("flood")))
        coverage = session.session.coverage
        assert coverage is not None
        process = session.session.processes[workload.pid]
        coverage.delivered.forget(workload.pid)
        before = coverage.backfilled
        started = time.perf_counter()
        coverage._backfill(process, 1)      # everything, as if just forked
        elapsed = time.perf_counter() - started
        count = coverage.backfilled - before
        session.stop()
    finally:
        workload.close()
    return count, elapsed


def short_jobs(jobs: int, records: int) -> tuple[int, int, int, int]:
    """(produced, received, overwritten, copy ns) for jobs under --all."""
    session = BackgroundSession(TraceOptions(all_processes=True,
                                             spec=TopicSpec.parse("job")))
    for index in range(jobs):
        subprocess.run([str(PROGS / "short_job"), str(records), str(index)],
                       check=True)
    records_seen = session.stop()
    coverage = session.session.coverage
    assert coverage is not None
    mine = [r for r in records_seen if r.comm == "short_job"]
    return jobs * records, len(mine), coverage.overwritten, coverage.copy_ns


def spawn_cost(runs: int) -> float:
    """Median wall time (ns) to fork, exec and reap `short_job 0`."""
    times = []
    for _ in range(runs):
        started = time.perf_counter_ns()
        subprocess.run([str(PROGS / "short_job"), "0"], check=True)
        times.append(time.perf_counter_ns() - started)
    return statistics.median(times)


def unnamed_cost(runs: int) -> tuple[float, float, float]:
    """A process the selection does not name: its fork, exec and exit with
    no session, under `--comm` of another name, under `--all`."""
    alone = spawn_cost(runs)
    costs = []
    for options in (TraceOptions(comms=["nobody-here"]),
                    TraceOptions(all_processes=True, spec=TopicSpec.parse("none"))):
        session = BackgroundSession(options)
        costs.append(spawn_cost(runs))
        session.stop()
    return alone, costs[0], costs[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args(argv)
    print("Coverage (bench/coverage_bench.py)")
    print(machine.describe())
    forks: list[int] = []
    execs: list[int] = []
    for _ in range(arguments.rounds):
        forks += fork_to_armed(10)
        execs += exec_to_armed(10)
    print(f"fork to armed:  {percentiles(forks)}")
    print(f"exec to armed:  {percentiles(execs)}")
    count, elapsed = backfill_rate()
    print(f"backfill:       {count} records in {elapsed * 1e3:.1f} ms = "
          f"{count / elapsed / 1e3:.0f} k records/s (Python, /proc/PID/mem)")
    produced, received, overwritten, copy_ns = short_jobs(300, 10)
    print(f"copy at exit:   300 jobs x 10: {received} of {produced} received; "
          f"BPF copied for {copy_ns / 1e6:.1f} ms in all "
          f"({copy_ns / max(received, 1):.0f} ns a record, core topics walked too)")
    produced, received, overwritten, _ = short_jobs(20, 200)
    print(f"wrapped ring:   20 jobs x 200 records in a 64-entry ring: "
          f"{received} received, {overwritten} counted overwritten, "
          f"received + overwritten = {received + overwritten} of {produced}")
    alone, other_comm, everything = unnamed_cost(200)
    print(f"fork+exec+exit of a process not named (median of 200): "
          f"{alone / 1e3:.0f} us untraced, {other_comm / 1e3:.0f} us under "
          f"--comm of another name, {everything / 1e3:.0f} us under --all "
          "(named: its exit scanned, no core found)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
