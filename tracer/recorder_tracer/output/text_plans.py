"""Text lines at batch speed: output/json_plans.py's line plans for
`recorder trace --batch`'s text columns (output/text.py).

A plan renders every column after TIME (PID, TID, COMM, TOPIC, WHERE,
MESSAGE) as output/text.py's format_record does; TIME, relative to the
first record printed, is rendered when the line leaves the reorder buffer.
The same formats get a plan as for JSON; each new plan is checked on its
first entry against format_record's line.
"""

from __future__ import annotations

from recorder_tracer.abi import MAX_ARGS
from recorder_tracer.decode.record import Record
from recorder_tracer.output.json_plans import (
    LinePlan,
    compile_plan,
    integer_argument_kinds,
    message_parts,
)
from recorder_tracer.output.text import (
    TIME_COLUMN,
    WHERE_WIDTH,
    TextPrinter,
    TimeMode,
    format_record,
    format_time,
    shorten,
    shorten_where,
)
from recorder_tracer.terminal import escape_controls


def _message_part(text: str) -> str:
    """A literal part of a message, as format_record shows it."""
    return escape_controls(text.replace("\n", "\\n"))


class TextPlans:
    """Line plans and the line sink for a TextPrinter."""

    def __init__(self, printer: TextPrinter) -> None:
        self.printer = printer
        self.built = 0

    def plan(self, entry: tuple[int, ...], *, pid: int, comm: str, cpu: int,
             topic: str, where: str, fmt: str,
             ns_pid: int | None) -> LinePlan | None:
        """The plan of the columns after TIME for entries like `entry`."""
        nargs = min(entry[6], MAX_ARGS)
        if integer_argument_kinds(entry) is None:
            return None
        # format_record drops a final newline: a plan's is in a literal part.
        message = message_parts(fmt.removesuffix("\n"), nargs, _message_part)
        if message is None:
            return None
        width = self.printer.topic_width
        where = shorten_where(where)
        self.built += 1
        return compile_plan([
            str(pid).ljust(7) + " ", ("t[2]", "<7"), " " + " ".join([
                escape_controls(comm).ljust(16),
                escape_controls(shorten(topic, width)).ljust(width),
                escape_controls(where).ljust(WHERE_WIDTH), ""]),
            *message, "\n"])

    def render(self, record: Record) -> str:
        """format_record's line for `record` after its TIME column (what a
        plan must equal)."""
        printer = self.printer
        line = format_record(record, printer.time_mode, record.ts,
                             printer.wall_offset_ns, printer.topic_width)
        time = format_time(record.ts, printer.time_mode, record.ts,
                           printer.wall_offset_ns)
        return line[len(time.ljust(TIME_COLUMN[printer.time_mode][1])) + 1:] + "\n"

    def write_lines(self, lines: list[tuple[int, str]]) -> None:
        """Print (timestamp, columns after TIME) pairs at once."""
        printer = self.printer
        printer.print_header()
        if printer.origin_ns is None:
            printer.origin_ns = lines[0][0]
        mode, origin = printer.time_mode, printer.origin_ns
        wall, width = printer.wall_offset_ns, TIME_COLUMN[mode][1]
        base = origin if mode is TimeMode.RELATIVE else 0
        if mode is not TimeMode.WALL and lines[0][0] >= base:
            # format_time's seconds and microseconds, inline: a run is in
            # time order, so none is before `base` (no sign).
            text = "".join([
                f"{(us := (ts - base) // 1000) // 1_000_000}.{us % 1_000_000:06d}"
                .ljust(width) + " " + columns for ts, columns in lines])
        else:
            text = "".join([format_time(ts, mode, origin, wall).ljust(width) + " "
                            + columns for ts, columns in lines])
        printer.stream.write(text)
        printer.count += len(lines)
        if printer.flush_each:
            printer.stream.flush()
