"""`recorder trace --batch --chrome` renders entries by line plans
(output/chrome_plans.py): every event a plan writes is the event the Chrome
writer writes for the same record, byte for byte, names of processes and
threads included, whichever path each record took; what no plan fits
keeps the Record path.
"""

from __future__ import annotations

import ctypes
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.plans import INTEGER_FORMATS, VALUES, OwnProcess, entry
from helpers.tracer import Workload
from timing import scaled

from recorder_tracer.abi import ENTRY_SPAN_END
from recorder_tracer.decode.entry import RawEntry, entry_record
from recorder_tracer.decode.record import Record
from recorder_tracer.decode.reorder import ReorderBuffer
from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.output.chrome import ChromeTraceWriter
from recorder_tracer.output.chrome_plans import ChromePlans
from recorder_tracer.output.json_plans import ChunkLines
from recorder_tracer.session.loop import TraceOptions, TraceSession

HOSTILE = {"comm": 'a"%d\\\x1b[2J\u202e{t[0]}', "topic": "t%s\u2028'x'",
           "where": "w\u202e%%.c:1\x9b\n"}


def record_of(raw: tuple[int, ...], fmt: str, *, pid: int = 77, comm: str = "app",
              topic: str = "net", where: str = "a.c:3") -> Record:
    """`raw` decoded as the session decodes it."""
    texts = {raw[8]: fmt, raw[9]: where}
    return entry_record(RawEntry(*raw[:10], raw[10:22]), pid=pid, comm=comm,
                        topic=topic, text=texts.get, string=lambda a: None, cpu=1)


def plan_of(raw: tuple[int, ...], fmt: str, *, pid: int = 77, comm: str = "app",
            topic: str = "net", where: str = "a.c:3") -> object:
    plans = ChromePlans(ChromeTraceWriter(io.StringIO()))
    return plans.plan(raw, pid=pid, comm=comm, cpu=1, topic=topic, where=where,
                      fmt=fmt, ns_pid=None)


@pytest.mark.parametrize("fmt", INTEGER_FORMATS)
def test_a_chrome_plan_writes_the_writers_event_for_integer_formats(fmt: str) -> None:
    conversions = fmt.replace("%%", "").count("%")
    for first in VALUES:
        values = [*[first, 2**64 - 1][:conversions], first ^ 0x55]
        for kinds in (0, 0b11 << (2 * conversions)):    # int, then pointer
            for flags in (0, 6):
                raw = entry(0x1000, values, arg_types=kinds, flags=flags)
                plan = plan_of(raw, fmt)
                assert plan is not None
                assert plan(raw) == ChromePlans.render(record_of(raw, fmt)), (
                    fmt, values, flags)


@pytest.mark.parametrize("names", [HOSTILE, {"comm": "", "topic": "", "where": ""}])
def test_a_chrome_plan_escapes_names_a_process_chose_as_the_writer_does(
        names: dict[str, str]) -> None:
    raw, fmt = entry(0x1000, [5]), "v=%d \" \\ \x07 \u202e"
    record = record_of(raw, fmt, **names)   # an empty location reads "?"
    plan = plan_of(raw, fmt, comm=record.comm, topic=record.topic,
                   where=record.where)
    assert plan is not None and plan(raw) == ChromePlans.render(record)


@pytest.mark.parametrize("duration", [0, 5, 123_456_789, 123_456_790, 2**63 - 1,
                                      2**64 - 5, 2**63])
@pytest.mark.parametrize("kind", [0, 0b11])     # a signed integer, a pointer
def test_a_span_ends_plan_chooses_slice_or_instant_as_the_writer(duration: int,
                                                                  kind: int) -> None:
    """A span's end is a complete event from its begin when its duration
    (args[0]) is at most its timestamp (123,456,789), else an instant."""
    raw = entry(0x1000, [duration, 9], arg_types=kind, flags=ENTRY_SPAN_END)
    plan = plan_of(raw, "end %d")
    expected = ChromePlans.render(record_of(raw, "end %d"))
    assert plan is not None and plan(raw) == expected
    record = json.loads(expected[3][2:])
    signed = duration - 2**64 if kind == 0 and duration >= 2**63 else duration
    assert record["ph"] == ("X" if signed <= 123_456_789 else "i")


@pytest.mark.parametrize(("fmt", "values", "arg_types"), [
    ("%5d", [1], 0), ("%s", [0x3000], 0b10), ("%f", [0], 0b01), ("%d %d", [1], 0),
    ("%p", [1], 0),
])
def test_no_chrome_plan_for_what_only_the_record_path_renders(
        fmt: str, values: list[int], arg_types: int) -> None:
    assert plan_of(entry(0x1000, values, arg_types=arg_types), fmt) is None


def with_tid(raw: tuple[int, ...], tid: int, ts: int) -> tuple[int, ...]:
    return (ts, raw[1], tid, *raw[3:])


def test_a_file_of_plans_and_records_is_the_record_paths_file() -> None:
    """Processes and threads named where they first come and renamed
    (an exec's new comm) alike, whichever path each record took, in runs
    of lines between records; tids reused."""
    raw = entry(0x1000, [1, 2])
    steps = []      # (pid, tid, comm, by plan)
    hostile = HOSTILE["comm"]
    for number, (pid, tid, comm) in enumerate([
            (77, 78, "app"), (77, 78, "app"), (77, 77, "app"), (90, 91, hostile),
            (77, 78, "app"), (77, 77, "renamed"), (77, 78, "app"), (77, 78, "renamed"),
            (90, 90, "x"), (77, 79, "app"), (90, 91, "x"), (77, 77, "renamed"),
            # tids reused: a new process of a thread's tid, a process's own
            # thread named before it by another process's thread of its tid
            (91, 91, "x"), (60, 61, "y"), (70, 60, "z"), (60, 60, "z"),
            (77, 78, "app")]):     # named "renamed" since
        for by_plan in (True, False, True, True):
            steps.append((pid, tid, comm, not by_plan if number % 5 == 4 else by_plan))
    by_records = io.StringIO()
    records_writer = ChromeTraceWriter(by_records)
    mixed = io.StringIO()
    mixed_writer = ChromeTraceWriter(mixed)
    mixed_writer.anchor = records_writer.anchor
    plans = ChromePlans(mixed_writer)
    run: list[tuple[int, object]] = []
    for ts, (pid, tid, comm, by_plan) in enumerate(steps, start=1000):
        item = with_tid(raw, tid, ts)
        record = record_of(item, "v %d %d", pid=pid, comm=comm)
        records_writer.write(record)
        if by_plan:
            plan = plan_of(item, "v %d %d", pid=pid, comm=comm)
            run.append((ts, plan(item)))     # type: ignore[operator]
            continue
        if run:
            plans.write_lines(run)       # type: ignore[arg-type]
            run = []
        mixed_writer.write(record)
    plans.write_lines(run)               # type: ignore[arg-type]
    records_writer.close([])
    mixed_writer.close([])
    assert mixed.getvalue() == by_records.getvalue()
    trace = json.loads(mixed.getvalue())
    assert trace["otherData"]["records"] == len(steps)
    assert sum(e["ph"] == "M" for e in trace["traceEvents"]) >= 8


def test_chunks_by_chrome_plans_through_the_reorder_buffer() -> None:
    """ChunkLines with Chrome's plans: a kind seen once stays a Record,
    one seen again gets its plan; chunks of two CPUs interleaved leave the
    reorder buffer in time order; the file is the Record path's."""
    fmt = ctypes.create_string_buffer(b"step %d of %u")
    own = OwnProcess()
    pid, processes, record = own.pid, own.processes, own.record
    streams = {mode: io.StringIO() for mode in ("plans", "records")}
    writers = {mode: ChromeTraceWriter(stream) for mode, stream in streams.items()}
    writers["plans"].anchor = writers["records"].anchor
    plans = ChromePlans(writers["plans"])
    buffers = {"plans": ReorderBuffer(writers["plans"].write, lines=plans.write_lines),
               "records": ReorderBuffer(writers["records"].write)}
    chunks = {"plans": ChunkLines(plans, buffers["plans"].push_many, processes.get,
                                  record),
              "records": ChunkLines(None, buffers["records"].push_many,
                                    processes.get, record)}
    base = entry(ctypes.addressof(fmt), [0, 0])
    for number in range(20):
        for cpu in (0, 1):
            batch = [with_tid((*base[:10], i, 2**64 - i, *base[12:]), pid + cpu,
                              10 * i + cpu) for i in range(number * 8, number * 8 + 8)]
            for mode in chunks:
                chunks[mode].on_chunk(cpu, pid, b"me", batch)
        for buffer in buffers.values():
            buffer.flush(until_ns=10 * number * 8)
    for mode, buffer in buffers.items():
        buffer.flush_all()
        writers[mode].close([])
    assert plans.built == 2         # one per CPU
    assert streams["plans"].getvalue() == streams["records"].getvalue()
    events = json.loads(streams["plans"].getvalue())["traceEvents"]
    instants = [e for e in events if e["ph"] == "i"]
    assert [e["args"]["args"][0] for e in instants] == [i // 2 for i in range(320)]
    assert [e["ts"] for e in instants] == sorted(e["ts"] for e in instants)


@pytest.mark.bpf
@pytest.mark.host   # the batch harvest is host-only for now (test_batch.py)
def test_a_batch_trace_writes_chrome_events_by_plans(progs: Path,
                                                      tmp_path: Path) -> None:
    workload = Workload(progs)
    path = tmp_path / "trace.json"
    try:
        with open(path, "w") as stream:
            writer = ChromeTraceWriter(stream)
            plans = ChromePlans(writer)
            session = TraceSession(
                TraceOptions(latency=False, pids=[workload.pid],
                             spec=TopicSpec.parse("tick:tock:flood")),
                writer.write, lines=plans)
            session.start()
            workload.record("flood", 997)      # within its 1024-entry ring
            workload.record("tick", 20)       # %s and %f: the Record path
            workload.record("tock", 50)
            session.close()
            writer.close(session.summaries())
    finally:
        workload.process.kill()
        workload.process.wait()
    trace = json.loads(path.read_text())
    events = trace["traceEvents"]
    records = [e for e in events if e["ph"] != "M"]
    assert plans.built >= 2      # flood's and tock's
    by_topic = {topic: [e["args"]["args"][0] for e in records if e["name"] == topic]
                for topic in ("flood", "tick", "tock")}
    assert by_topic == {"flood": list(range(997)), "tick": list(range(20)),
                        "tock": list(range(50))}
    assert [e["ts"] for e in records] == sorted(e["ts"] for e in records)
    names = [(e["name"], e["tid"]) for e in events if e["ph"] == "M"]
    assert sorted(names) == sorted({("process_name", workload.pid),
                                    *{("thread_name", e["tid"]) for e in records}})
    assert trace["otherData"]["received"] == len(records) == 1067
    assert trace["otherData"]["lost"] == 0


@pytest.mark.bpf
@pytest.mark.host   # the batch harvest is host-only for now (test_batch.py)
def test_recorder_trace_batch_chrome_writes_every_record(progs: Path,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    result = subprocess.run(
        [sys.executable, "-m", "recorder_tracer.cli", "trace", "--batch",
         "--no-snapshots", "--chrome", str(path), "-c",
         f"{progs / 'workload_burst'} 100 0", "burst"],
        capture_output=True, text=True, timeout=scaled(60))
    assert result.returncode == 0, result.stderr
    trace = json.loads(path.read_text())
    events = trace["traceEvents"]
    records = [e for e in events if e["ph"] == "i"]
    assert [e["args"]["message"] for e in records] == [
        f"burst {i} of 100" for i in range(100)]
    assert [e["args"]["args"] for e in records] == [[i, 100] for i in range(100)]
    pid = records[0]["pid"]
    assert [(e["name"], e["tid"], e["args"]["name"]) for e in events
            if e["ph"] == "M"] == [("process_name", pid, "workload_burst"),
                                   ("thread_name", pid, "workload_burst")]
    assert (trace["otherData"]["received"], trace["otherData"]["lost"]) == (100, 0)
