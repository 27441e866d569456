"""Chrome trace-event JSON, which Perfetto and chrome://tracing open.

Each record is a thread-scoped instant event ("ph": "i", "s": "t") on its
thread's track, named after its topic, with `ts` in microseconds; a span's
end (flag SPAN_END, args[0] its duration) is a complete event ("ph": "X")
from its begin to its end, which Perfetto draws as a slice, nested by time
(its begin record stays an instant: a span that never ended still shows). Each
process and thread is named once by a metadata event ("ph": "M") when it
first appears, and again if its name changes. The file is one JSON object,
written as records arrive; `close` ends the event array and puts the per-CPU
summary and the clock anchor (wall = ts + wall_offset_ns, in ns) under
"otherData", so the file is valid JSON only once closed.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from recorder_tracer.decode.record import Record
from recorder_tracer.output.writer import CpuCounts, Writer, json_value, summary_json
from recorder_tracer.terminal import json_escaped


def record_event(record: Record) -> dict[str, Any]:
    """The trace event of one record: a slice for a span's end, else an
    instant."""
    event: dict[str, Any] = {"name": record.topic, "cat": record.provider}
    duration = record.span_duration_ns
    if duration is not None and duration <= record.ts:
        event.update(ph="X", ts=(record.ts - duration) / 1000, dur=duration / 1000)
    else:
        event.update(ph="i", s="t", ts=record.ts / 1000)
    event.update(pid=record.pid, tid=record.tid, args={
        "message": record.message,
        "where": record.where,
        "args": [json_value(arg) for arg in record.args],
    })
    if record.flags:
        event["args"]["flags"] = record.flags
    return event


def name_event(kind: str, pid: int, tid: int, name: str) -> dict[str, Any]:
    """A metadata event naming a process ("process_name") or a thread."""
    return {"name": kind, "ph": "M", "pid": pid, "tid": tid,
            "args": {"name": name}}


class ChromeTraceWriter(Writer):
    """Write records as Chrome trace events, one per line, as they come."""

    def __init__(self, stream: TextIO, flush: bool | None = None) -> None:
        super().__init__(stream, flush)
        self._started = False
        self._process_names: dict[int, str] = {}
        self._thread_names: dict[int, str] = {}

    def write(self, record: Record) -> None:
        """Write one record (and the names of its process and thread if new)."""
        self.write_events(self.names(record.pid, record.tid, record.comm)
                          + ",\n" + _dumps(record_event(record)), 1)

    def names(self, pid: int, tid: int, comm: str) -> str:
        """The metadata events (each after ",\n") naming `pid` and `tid`
        `comm` where it is new or a rename; "" when both are known."""
        text = ""
        processes = self._process_names
        if pid not in processes or (tid == pid and processes[pid] != comm):
            processes[pid] = comm
            text = ",\n" + _dumps(name_event("process_name", pid, pid, comm))
        if self._thread_names.get(tid) != comm:
            self._thread_names[tid] = comm
            text += ",\n" + _dumps(name_event("thread_name", pid, tid, comm))
        return text

    def write_events(self, text: str, count: int) -> None:
        """Write events rendered already, each after ",\n" (`count`
        records among them): the first of the file opens the array."""
        if not self._started:
            self._started = True
            text = '{"traceEvents": [\n' + text[2:]
        self._emit(text)
        self.count += count

    def write_lines(self, lines: list[tuple[int, tuple[int, int, str, str]]]
                    ) -> None:
        """Write the (timestamp, (tid, pid, comm, event)) pairs of line
        plans (output/chrome_plans.py) at once, each after the events
        naming its process and thread where write() would write them."""
        threads, processes = self._thread_names, self._process_names
        pieces = []
        for _ts, (tid, pid, comm, event) in lines:
            if (threads.get(tid) != comm or pid not in processes
                    or (tid == pid and processes[pid] != comm)):
                pieces.append(self.names(pid, tid, comm))
            pieces.append(event)
        self.write_events("".join(pieces), len(lines))

    def _finish(self, summary: list[CpuCounts]) -> None:
        head = ("\n" if self._started else '{"traceEvents": [')
        other = {"records": self.count, **summary_json(summary), **self.anchor}
        self._emit(f'{head}],\n"displayTimeUnit": "ns",\n'
                   f'"otherData": {_dumps(other)}}}\n')


def _dumps(value: dict[str, Any]) -> str:
    return json_escaped(json.dumps(value, ensure_ascii=False, allow_nan=False))
