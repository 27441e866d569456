"""Exporters: JSON lines and Chrome trace events, parsed back exactly."""

from __future__ import annotations

import doctest
import io
import json
import math
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from recorder_tracer.abi import ENTRY_SPAN_BEGIN as SPAN_BEGIN
from recorder_tracer.abi import ENTRY_SPAN_END as SPAN_END
from recorder_tracer.decode import record as record_module
from recorder_tracer.decode.record import Record
from recorder_tracer.output import writer as export
from recorder_tracer.output.chrome import ChromeTraceWriter
from recorder_tracer.output.jsonl import JsonLinesWriter
from recorder_tracer.output.sinks import open_writer


@dataclass
class Counts:
    cpu: int
    produced: int
    received: int
    lost: int


RECORDS = [
    Record(ts=1_000_000_500, pid=100, tid=100, comm="server", topic="net",
           where="net.c:12", message="sent 42 to h\u00f4te", args=[42, "h\u00f4te"],
           cpu=0),
    Record(ts=1_000_250_000, pid=100, tid=101, comm="worker", topic="disk",
           where="disk.c:7", message="ratio inf, name <unreadable>",
           args=[math.inf, None, -1.5], cpu=1),
    Record(ts=1_002_000_000, pid=200, tid=200, comm="client", topic="function__entry",
           where="", message="", args=[], cpu=1, provider="python"),
]
SUMMARY = [Counts(cpu=1, produced=3, received=2, lost=1),
           Counts(cpu=0, produced=1, received=1, lost=0)]


def test_jsonl_writes_one_object_per_record_then_the_summary() -> None:
    out = io.StringIO()
    writer = JsonLinesWriter(out)
    for record in RECORDS:
        writer.write(record)
    writer.close(SUMMARY)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {"type": "header", **writer.anchor}
    assert lines[1:] == [
        {"type": "record", "ts": 1_000_000_500, "pid": 100, "tid": 100,
         "comm": "server", "cpu": 0, "provider": "recorder", "topic": "net",
         "where": "net.c:12", "message": "sent 42 to h\u00f4te",
         "args": [42, "h\u00f4te"], "flags": 0},
        {"type": "record", "ts": 1_000_250_000, "pid": 100, "tid": 101,
         "comm": "worker", "cpu": 1, "provider": "recorder", "topic": "disk",
         "where": "disk.c:7", "message": "ratio inf, name <unreadable>",
         "args": ["inf", None, -1.5], "flags": 0},
        {"type": "record", "ts": 1_002_000_000, "pid": 200, "tid": 200,
         "comm": "client", "cpu": 1, "provider": "python",
         "topic": "function__entry", "where": "", "message": "", "args": [],
         "flags": 0},
        {"type": "summary", "records": 3,
         "cpus": [{"cpu": 0, "received": 1, "lost": 0, "produced": 1},
                  {"cpu": 1, "received": 2, "lost": 1, "produced": 3}],
         "received": 3, "lost": 1},
    ]


def test_jsonl_line_is_out_as_soon_as_the_record_is_written() -> None:
    out = io.StringIO()
    writer = JsonLinesWriter(out)
    writer.write(RECORDS[0])
    assert json.loads(out.getvalue().splitlines()[1])["ts"] == 1_000_000_500
    assert out.getvalue().count("\n") == 2          # the header, the record


def test_writer_closes_once_with_its_own_summary_as_a_context_manager() -> None:
    out = io.StringIO()
    with JsonLinesWriter(out) as writer:
        writer.summary = [SimpleNamespace(cpu=0, received=0, lost=0)]
    writer.close(SUMMARY)      # already closed: nothing more is written
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [
        {"type": "header", **writer.anchor},
        {"type": "summary", "records": 0,
         "cpus": [{"cpu": 0, "received": 0, "lost": 0}], "received": 0, "lost": 0},
    ]


def test_chrome_trace_has_named_tracks_and_instant_events() -> None:
    out = io.StringIO()
    writer = ChromeTraceWriter(out)
    for record in RECORDS:
        writer.write(record)
    writer.close(SUMMARY)
    trace = json.loads(out.getvalue())

    def meta(kind: str, pid: int, tid: int, name: str) -> dict[str, Any]:
        return {"name": kind, "ph": "M", "pid": pid, "tid": tid,
                "args": {"name": name}}

    assert trace["traceEvents"] == [
        meta("process_name", 100, 100, "server"),
        meta("thread_name", 100, 100, "server"),
        {"name": "net", "cat": "recorder", "ph": "i", "s": "t", "ts": 1_000_000.5,
         "pid": 100, "tid": 100,
         "args": {"message": "sent 42 to h\u00f4te", "where": "net.c:12",
                  "args": [42, "h\u00f4te"]}},
        meta("thread_name", 100, 101, "worker"),
        {"name": "disk", "cat": "recorder", "ph": "i", "s": "t", "ts": 1_000_250.0,
         "pid": 100, "tid": 101,
         "args": {"message": "ratio inf, name <unreadable>", "where": "disk.c:7",
                  "args": ["inf", None, -1.5]}},
        meta("process_name", 200, 200, "client"),
        meta("thread_name", 200, 200, "client"),
        {"name": "function__entry", "cat": "python", "ph": "i", "s": "t",
         "ts": 1_002_000.0, "pid": 200, "tid": 200,
         "args": {"message": "", "where": "", "args": []}},
    ]
    assert trace["displayTimeUnit"] == "ns"
    assert trace["otherData"] == {
        "records": 3,
        "cpus": [{"cpu": 0, "received": 1, "lost": 0, "produced": 1},
                 {"cpu": 1, "received": 2, "lost": 1, "produced": 3}],
        "received": 3, "lost": 1, **writer.anchor,
    }


def test_chrome_trace_streams_events_and_renames_a_thread_after_exec() -> None:
    out = io.StringIO()
    writer = ChromeTraceWriter(out)
    writer.write(RECORDS[0])
    # Each event is out once written: the text so far plus the end parses.
    assert len(json.loads(out.getvalue() + "]}")["traceEvents"]) == 3
    renamed = Record(ts=1_003_000_000, pid=100, tid=100, comm="server2",
                     topic="net", where="net.c:12", message="m", args=[], cpu=0)
    writer.write(renamed)
    writer.close([])
    names = [(e["name"], e["args"]["name"]) for e in
             json.loads(out.getvalue())["traceEvents"] if e["ph"] == "M"]
    assert names == [("process_name", "server"), ("thread_name", "server"),
                     ("process_name", "server2"), ("thread_name", "server2")]


def test_empty_chrome_trace_is_valid_json() -> None:
    out = io.StringIO()
    writer = ChromeTraceWriter(out)
    writer.close([])
    assert json.loads(out.getvalue()) == {
        "traceEvents": [], "displayTimeUnit": "ns",
        "otherData": {"records": 0, "cpus": [], "received": 0, "lost": 0,
                      **writer.anchor}}


# Two nested spans on one thread, as recorder.span and @traced record them:
# outer begins at 10 us, inner runs 20..50 us, outer ends at 90 us.
SPANS = [
    Record(ts=10_000, pid=7, tid=7, comm="app", topic="outer", where="a.py:3",
           message="begin", flags=SPAN_BEGIN),
    Record(ts=20_000, pid=7, tid=7, comm="app", topic="mod.inner", where="a.py:9",
           message="begin", flags=SPAN_BEGIN),
    Record(ts=50_000, pid=7, tid=7, comm="app", topic="mod.inner", where="a.py:9",
           message="end 30000 ns", args=[30_000], flags=SPAN_END),
    Record(ts=90_000, pid=7, tid=7, comm="app", topic="outer", where="a.py:3",
           message="end 80000 ns", args=[80_000], flags=SPAN_END),
]


def test_chrome_span_ends_are_perfetto_slices_nested_by_time() -> None:
    out = io.StringIO()
    writer = ChromeTraceWriter(out)
    for record in SPANS:
        writer.write(record)
    writer.close([])
    events = [e for e in json.loads(out.getvalue())["traceEvents"] if e["ph"] != "M"]
    slices = [(e["name"], e["ts"], e["dur"]) for e in events if e["ph"] == "X"]
    assert slices == [("mod.inner", 20.0, 30.0), ("outer", 10.0, 80.0)]
    begins = [(e["name"], e["ts"], e["args"]["flags"]) for e in events
              if e["ph"] == "i"]
    assert begins == [("outer", 10.0, SPAN_BEGIN), ("mod.inner", 20.0, SPAN_BEGIN)]
    # Nested: the inner slice lies within the outer one.
    inner, outer = slices
    assert outer[1] <= inner[1] and inner[1] + inner[2] <= outer[1] + outer[2]


def test_jsonl_carries_flags_and_span_durations() -> None:
    out = io.StringIO()
    writer = JsonLinesWriter(out)
    for record in SPANS:
        writer.write(record)
    lines = [json.loads(line) for line in out.getvalue().splitlines()][1:]
    assert [(r["topic"], r["flags"], r.get("duration_ns")) for r in lines] == [
        ("outer", SPAN_BEGIN, None), ("mod.inner", SPAN_BEGIN, None),
        ("mod.inner", SPAN_END, 30_000), ("outer", SPAN_END, 80_000)]


def test_clock_anchor_puts_records_on_the_wall_clock() -> None:
    anchor = JsonLinesWriter(io.StringIO()).anchor
    now_wall = time.time_ns()
    now_monotonic = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert anchor["clock"] == "CLOCK_MONOTONIC"
    # A record made now, put on the wall clock, is now (within 50 ms).
    assert abs(now_monotonic + int(anchor["wall_offset_ns"]) - now_wall) < 50_000_000


@pytest.mark.parametrize(("kind", "writer_class"), [
    ("jsonl", JsonLinesWriter), ("chrome", ChromeTraceWriter)])
def test_open_writer_picks_the_format(kind: str, writer_class: type) -> None:
    assert isinstance(open_writer(kind, io.StringIO()), writer_class)


def test_open_writer_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match=r"^unknown export format 'xml'; "
                                         r"choose from chrome, jsonl$"):
        open_writer("xml", io.StringIO())


@pytest.mark.parametrize("module", [export, record_module])
def test_docstring_examples_hold(module: Any) -> None:
    assert doctest.testmod(module).failed == 0
