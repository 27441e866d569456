"""Chrome trace events at batch speed: output/json_plans.py's line plans
for `recorder trace --batch --chrome` (output/chrome.py).

A plan renders a record's event (after its ",\\n") as record_event() and
the writer's JSON make it: an instant, or for a span's end a complete event
from its begin when its duration fits before it (a choice made per entry).
The events naming a process and a thread depend on what was written before
them, so a plan gives (tid, pid, comm, event) and the writer names them when
the line leaves the reorder buffer (ChromeTraceWriter.write_lines), from
the same state as its Record path. The same formats get a plan as for
JSON; each new plan is checked on its first entry against the writer's own
event.
"""

from __future__ import annotations

from typing import Any

from recorder_tracer.abi import ARG_INT, ENTRY_SPAN_END, MAX_ARGS
from recorder_tracer.decode.record import Record
from recorder_tracer.output.chrome import ChromeTraceWriter, _dumps, record_event
from recorder_tracer.output.json_plans import (
    ARGS_AT,
    LinePlan,
    Parts,
    _quoted,
    _signed64,
    compile_lines,
    fstring,
    integer_argument_kinds,
    message_parts,
)
from recorder_tracer.target.notes import RECORDER_PROVIDER

ChromeLine = tuple[int, int, str, str]     # tid, pid, comm, event


class ChromePlans:
    """Line plans and the line sink for a ChromeTraceWriter."""

    def __init__(self, writer: ChromeTraceWriter) -> None:
        self.writer = writer
        self.write_lines = writer.write_lines
        self.built = 0          # plans compiled
        self.refused = 0        # kinds of entry left to the Record path

    def plan(self, entry: tuple[int, ...], *, pid: int, comm: str, cpu: int,
             topic: str, where: str, fmt: str,
             ns_pid: int | None) -> LinePlan | None:
        """The plan for entries like `entry` (same format, location,
        argument kinds, flags) of this process and comm."""
        nargs, flags = min(entry[6], MAX_ARGS), entry[7]
        kinds = integer_argument_kinds(entry)
        message = message_parts(fmt, nargs)
        if message is None or kinds is None:
            self.refused += 1
            return None
        args = [_signed64(i) if kind == ARG_INT else f"t[{ARGS_AT + i}]"
                for i, kind in enumerate(kinds)]
        head = (',\n{"name": ' + _quoted(topic) + ', "cat": '
                + _quoted(RECORDER_PROVIDER) + ', "ph": ')
        tail: Parts = [f', "pid": {pid}, "tid": ', ("t[2]", ""),
                       ', "args": {"message": "', *message,
                       '", "where": ' + _quoted(where) + ', "args": [']
        for number, arg in enumerate(args):
            tail += [", "] * bool(number) + [(arg, "")]
        tail.append("]" + (f', "flags": {flags}' if flags else "") + "}}")
        constants: dict[str, Any] = {"_pid": pid, "_comm": comm}
        code = fstring([head + '"i", "s": "t", "ts": ', ("t[0] / 1000", ""),
                        *tail], constants)
        if flags & ENTRY_SPAN_END and nargs:
            # A complete event from its begin, when the begin is not
            # before 0 (record_event's choice, per entry).
            duration = args[0]
            span = fstring([head + '"X", "ts": ', (f"(t[0] - {duration}) / 1000", ""),
                            ', "dur": ', (f"{duration} / 1000", ""), *tail],
                           constants)
            code = f"({span} if {duration} <= t[0] else {code})"
        self.built += 1
        return compile_lines(f"(t[2], _pid, _comm, {code})", constants)

    @staticmethod
    def render(record: Record) -> ChromeLine:
        """What a plan must give for `record`: the writer's own event."""
        return (record.tid, record.pid, record.comm,
                ",\n" + _dumps(record_event(record)))
