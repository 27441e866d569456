"""`make demo`: trace a C workload live and watch it crash, then a Python one.

Part 1 runs build/demo/recorder_demo under `recorder trace -c`, arming two of
its three topics, prints the first records as they stream, a per-topic
count, what was received and lost per CPU, and the tail of the crash dump the
process printed before dying by SIGSEGV, and the crash snapshot BPF took
at the fault (its last records, armed topics or not). Part 2 runs it again
with metrics only (the kernel aggregates, no record is copied) and prints the
metrics table. Part 3 traces demo/py_worker.py by PID: its run-time topic
py_job is armed, py_chatter is not.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from recorder_tracer.decode.record import Record
from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.errors import TracerError
from recorder_tracer.output.text import format_header, format_record
from recorder_tracer.postmortem.snapshot import SnapshotOptions
from recorder_tracer.postmortem.snapshot_file import print_snapshot, read_snapshot
from recorder_tracer.session.loop import TraceOptions, TraceSession

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "build" / "demo" / "recorder_demo"
PY_WORKER = REPO / "demo" / "py_worker.py"
SHOWN = 12


def main() -> int:
    if not DEMO.exists():
        print(f"demo: {DEMO} is missing; run `make`", file=sys.stderr)
        return 1
    counts: collections.Counter[str] = collections.Counter()
    first_ns: list[int] = []

    def show(record: Record) -> None:
        counts[record.topic] += 1
        if not first_ns:
            first_ns.append(record.ts)
            print(format_header())
        if sum(counts.values()) <= SHOWN:
            print(format_record(record, origin_ns=first_ns[0]))
        elif sum(counts.values()) == SHOWN + 1:
            print("   ... (counting the rest)")

    snapshots = tempfile.TemporaryDirectory(prefix="recorder-snapshots-")
    with tempfile.TemporaryFile("w+") as dump, snapshots:
        options = TraceOptions(command=[str(DEMO), "3"],
                               spec=TopicSpec.parse("demo_request:demo_reply"),
                               command_stderr=dump.fileno(),
                               snapshots=SnapshotOptions(snapshots.name, 64))
        print("demo: tracing `recorder_demo 3` (topics demo_request, demo_reply;"
              " demo_debug stays unarmed)\n")
        try:
            session = TraceSession(options, show, lambda m: print(f"demo: {m}"))
            session.run()
        except TracerError as error:
            print(f"demo: {error}", file=sys.stderr)
            return 1
        print("\nRecords per topic, as the kernel counted them and as received:")
        for topic, count in sorted(counts.items()):
            print(f"  {topic:<14} {count:>6}")
        for cpu in session.summaries():
            print(f"  CPU {cpu.cpu}: {cpu.received} received, {cpu.lost} lost "
                  f"({cpu.produced} produced)")
        status = session.child_status or 0
        if os.WIFSIGNALED(status):
            print(f"\nrecorder_demo died by {signal.Signals(os.WTERMSIG(status)).name};"
                  " the last lines of its own crash dump (all three topics):")
        dump.seek(0)
        for line in dump.read().splitlines()[-8:]:
            print(f"  {line}")
        show_snapshot(Path(snapshots.name))
    return metrics_part() or python_part()


def metrics_part() -> int:
    """Run the C workload again, metrics only, and print the table."""
    from recorder_tracer.metrics.aggregates import metrics_options, watch
    from recorder_tracer.metrics.table import console, metrics_table
    print("\ndemo: `recorder metrics -c 'recorder_demo 3' 'demo_.*'`: the same "
          "workload, aggregated in the kernel (no record copied)\n")
    with open(os.devnull, "w") as quiet:
        options = metrics_options(command=[str(DEMO), "3"], specs=["demo_.*"])
        options.command_stderr = quiet.fileno()
        try:
            session = TraceSession(options, lambda record: None,
                                   lambda m: print(f"demo: {m}"))
            session.start()
        except TracerError as error:
            print(f"demo: {error}", file=sys.stderr)
            return 1
        watch(session, lambda rows: console().print(metrics_table(rows)))
    return 0


def show_snapshot(directory: Path) -> None:
    """The post-mortem: the snapshot BPF took as recorder_demo died (all
    its topics, the unarmed demo_debug too), as `recorder show` prints it."""
    files = sorted(directory.glob("*.json"))
    if not files:
        print("\ndemo: no crash snapshot was written", file=sys.stderr)
        return
    print(f"\nCrash snapshot (`recorder show {files[-1].name}`), its last 8 "
          "records:")
    print_snapshot(read_snapshot(files[-1]), sys.stdout, last=8)


def python_part() -> int:
    """Trace a Python worker's run-time topic by PID until it exits."""
    print("\ndemo: tracing demo/py_worker.py by PID (topic py_job; py_chatter"
          " stays unarmed)\n")
    worker = subprocess.Popen([sys.executable, str(PY_WORKER), "1.5"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert worker.stdin is not None and worker.stdout is not None
    worker.stdout.readline()
    records: list[Record] = []
    try:
        session = TraceSession(
            TraceOptions(pids=[worker.pid], spec=TopicSpec.parse("py_job")),
            records.append, lambda m: print(f"demo: {m}"))
        session.start()
        worker.stdin.write("go\n")
        worker.stdin.flush()
        session.run(start=False)
    except TracerError as error:
        print(f"demo: {error}", file=sys.stderr)
        worker.kill()
        return 1
    finally:
        worker.wait()
    if records:
        print(format_header())
        for record in records[:6]:
            print(format_record(record, origin_ns=records[0].ts))
    print(f"   ... {len(records)} py_job records in all; "
          + ", ".join(f"CPU {cpu.cpu}: {cpu.received} received, {cpu.lost} lost"
                      for cpu in session.summaries()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
