"""JSON lines: a header, one object per record, then one summary object.

    {"type": "header", "clock": "CLOCK_MONOTONIC", "wall_offset_ns": ..., ...}
    {"type": "record", "ts": 1200, "pid": 7, "tid": 7, "comm": "app", ...}
    {"type": "summary", "cpus": [{"cpu": 0, "received": 1, "lost": 0}], ...}

The header anchors `ts` (CLOCK_MONOTONIC ns) to wall-clock time: wall =
ts + wall_offset_ns. A record carries its entry's `flags`; a span's end
also its `duration_ns` (so its begin is ts - duration_ns).
"""

from __future__ import annotations

import json
from typing import Any

from recorder_tracer.decode.record import Record
from recorder_tracer.output.writer import CpuCounts, Writer, json_value, summary_json
from recorder_tracer.terminal import json_escaped


def record_json(record: Record) -> dict[str, Any]:
    """The JSON object of one record (ts in ns, CLOCK_MONOTONIC)."""
    value: dict[str, Any] = {
        "type": "record",
        "ts": record.ts,
        "pid": record.pid,
        "tid": record.tid,
        "comm": record.comm,
        "cpu": record.cpu,
        "provider": record.provider,
        "topic": record.topic,
        "where": record.where,
        "message": record.message,
        "args": [json_value(arg) for arg in record.args],
        "flags": record.flags,
        **({"ns_pid": record.ns_pid} if record.ns_pid is not None else {}),
    }
    if (duration := record.span_duration_ns) is not None:
        value["duration_ns"] = duration
    return value


class JsonLinesWriter(Writer):
    """Write each record as one JSON line; `close` adds the summary line.

    Each line is flushed by default: `recorder trace --json | jq` streams.
    """

    flush_each_default = True

    _header_out = False

    def write(self, record: Record) -> None:
        """Write one record as a line (after the header, first)."""
        self._header()
        self._emit(_dumps(record_json(record)) + "\n")
        self.count += 1

    def write_lines(self, text: str, count: int) -> None:
        """Write `count` record lines rendered already (output/json_plans.py),
        as one piece (after the header, first)."""
        self._header()
        self._emit(text)
        self.count += count

    def _header(self) -> None:
        if not self._header_out:
            self._header_out = True
            self._emit(_dumps({"type": "header", **self.anchor}) + "\n")

    def _finish(self, summary: list[CpuCounts]) -> None:
        self._header()
        self._emit(_dumps({"type": "summary", "records": self.count,
                           **summary_json(summary)}) + "\n")


def _dumps(value: dict[str, Any]) -> str:
    return json_escaped(json.dumps(value, ensure_ascii=False, allow_nan=False,
                                   separators=(", ", ": ")))
