"""Text output of records: bcc-style fixed columns under one header.

A record's message is rendered by decode/render.py; this module lays out
the TIME, PID, TID, COMM, TOPIC, WHERE and MESSAGE columns, escapes control
characters a traced process put in its text, and prints the header once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from enum import Enum
from typing import Any, TextIO

from recorder_tracer.decode.record import Record
from recorder_tracer.terminal import escape_controls


class TimeMode(Enum):
    """How the TIME column shows a record's timestamp."""

    RELATIVE = "relative"     # seconds since the first record (or a given origin)
    MONOTONIC = "monotonic"   # seconds of CLOCK_MONOTONIC, the records' clock
    WALL = "wall"             # local wall-clock time, HH:MM:SS.micros


# (title, width) after TIME; the last column, MESSAGE, takes the rest.
# TOPIC's width is the least it gets: a printer widens it to fit the names
# it will show (USDT probes are long: function__entry), up to TOPIC_WIDTH_MAX,
# so the columns before MESSAGE stay under 100 characters.
COLUMNS: tuple[tuple[str, int], ...] = (
    ("PID", 7), ("TID", 7), ("COMM", 16), ("TOPIC", 12), ("WHERE", 18),
    ("MESSAGE", 0),
)
TOPIC_WIDTH = 12
TOPIC_WIDTH_MAX = 24
WHERE_WIDTH = 18
# TIME's title and width: 12345.123456, 1234567.123456, 12:34:56.123456
TIME_COLUMN = {
    TimeMode.RELATIVE: ("TIME(s)", 12),
    TimeMode.MONOTONIC: ("TIME(s)", 14),
    TimeMode.WALL: ("TIME", 15),
}


def format_header(time_mode: TimeMode = TimeMode.RELATIVE,
                  topic_width: int = TOPIC_WIDTH) -> str:
    """The column titles, once at the top of the output.

    >>> format_header().split()
    ['TIME(s)', 'PID', 'TID', 'COMM', 'TOPIC', 'WHERE', 'MESSAGE']
    """
    return _columns(time_mode, [TIME_COLUMN[time_mode][0],
                                *(title for title, _ in COLUMNS)], topic_width)


def topic_width_for(names: Iterable[str]) -> int:
    """The TOPIC width that fits `names`, within [TOPIC_WIDTH, TOPIC_WIDTH_MAX].

    >>> topic_width_for(["tick"]), topic_width_for(["function__entry"])
    (12, 15)
    >>> topic_width_for(["import__find__load__start__with__a__long__tail"])
    24
    """
    longest = max((len(name) for name in names), default=0)
    return min(max(longest, TOPIC_WIDTH), TOPIC_WIDTH_MAX)


def shorten_where(where: str) -> str:
    """A location cut to WHERE_WIDTH, keeping its end (file and line)."""
    return where if len(where) <= WHERE_WIDTH else ".." + where[-(WHERE_WIDTH - 2):]


def shorten(text: str, width: int) -> str:
    """`text` cut to `width` in its middle, where names differ least (both
    `import__find__load__start` and `__done` keep their ends).

    >>> shorten("function__entry", 12), shorten("tick", 12)
    ('funct..entry', 'tick')
    """
    if len(text) <= width:
        return text
    kept = width - 2
    return text[:kept - kept // 2] + ".." + text[len(text) - kept // 2:]


def format_time(ts: int, time_mode: TimeMode = TimeMode.RELATIVE,
                origin_ns: int = 0, wall_offset_ns: int = 0) -> str:
    """The TIME column of a timestamp (ns, CLOCK_MONOTONIC).

    `wall_offset_ns` is CLOCK_REALTIME - CLOCK_MONOTONIC (see `wall_offset`).

    >>> format_time(3_500_000_000, origin_ns=1_000_000_000)
    '2.500000'
    """
    if time_mode is TimeMode.WALL:
        wall = ts + wall_offset_ns
        seconds, nanoseconds = divmod(wall, 1_000_000_000)
        return time.strftime("%H:%M:%S", time.localtime(seconds)) + \
            f".{nanoseconds // 1000:06d}"
    if time_mode is TimeMode.RELATIVE:
        ts -= origin_ns
    sign = "-" if ts < 0 else ""
    seconds, nanoseconds = divmod(abs(ts), 1_000_000_000)
    return f"{sign}{seconds}.{nanoseconds // 1000:06d}"


def wall_offset() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC now, in ns."""
    return time.clock_gettime_ns(time.CLOCK_REALTIME) - \
        time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def format_record(record: Record, time_mode: TimeMode = TimeMode.RELATIVE,
                  origin_ns: int = 0, wall_offset_ns: int = 0,
                  topic_width: int = TOPIC_WIDTH) -> str:
    """One line for a record, under `format_header`'s columns.

    WHERE keeps its end (the line number) when it is too wide, TOPIC its
    two ends (see `shorten`); the message stays on one line (a final
    newline is dropped, others shown as \\n).

    >>> r = Record(ts=2_000_123_000, pid=42, tid=43, comm="app", topic="net",
    ...            where="src/net.c:12", message="sent 4", args=[4], cpu=0)
    >>> format_record(r, origin_ns=1_000_000_000).split(maxsplit=6)
    ['1.000123', '42', '43', 'app', 'net', 'src/net.c:12', 'sent 4']
    """
    where = shorten_where(record.where)
    message = record.message.removesuffix("\n").replace("\n", "\\n")
    return _columns(time_mode, [
        format_time(record.ts, time_mode, origin_ns, wall_offset_ns),
        str(record.pid), str(record.tid), escape_controls(record.comm),
        escape_controls(shorten(record.topic, topic_width)),
        escape_controls(where), escape_controls(message),
    ], topic_width)


def _columns(time_mode: TimeMode, values: Iterable[str],
             topic_width: int = TOPIC_WIDTH) -> str:
    widths = [TIME_COLUMN[time_mode][1],
              *(topic_width if title == "TOPIC" else width
                for title, width in COLUMNS)]
    return " ".join(value.ljust(width) if width else value
                    for value, width in zip(values, widths, strict=True))


class TextPrinter:
    """Print records as lines under a header printed once.

    With RELATIVE time the origin is `origin_ns`, or the first record's time.
    TOPIC is `topic_width` wide; `fit_topics` widens it before the header is
    out. It has the writers' interface (`write`, `close`), so the CLI can
    pick it or an exporter alike.
    """

    def __init__(self, stream: TextIO, time_mode: TimeMode = TimeMode.RELATIVE,
                 origin_ns: int | None = None, header: bool = True,
                 flush: bool = True, topic_width: int = TOPIC_WIDTH) -> None:
        self.stream = stream
        self.time_mode = time_mode
        self.origin_ns = origin_ns
        self.topic_width = topic_width
        self.wall_offset_ns = wall_offset() if time_mode is TimeMode.WALL else 0
        self.flush_each = flush
        self._header = header
        self._header_out = False
        self.count = 0

    def fit_topics(self, names: Iterable[str]) -> None:
        """Make TOPIC wide enough for `names` (see `topic_width_for`); once
        the header is out, the columns stay as they are."""
        if self.count == 0 and not self._header_out:
            self.topic_width = topic_width_for(names)

    def print_header(self) -> None:
        """Print the header now, unless it was printed already."""
        if self._header:
            self._header = False
            self._header_out = True
            self.stream.write(format_header(self.time_mode, self.topic_width)
                              + "\n")

    def write(self, record: Record) -> None:
        """Print one record."""
        self.print_header()
        if self.origin_ns is None:
            self.origin_ns = record.ts
        self.stream.write(format_record(record, self.time_mode, self.origin_ns,
                                        self.wall_offset_ns, self.topic_width)
                          + "\n")
        self.count += 1
        if self.flush_each:
            self.stream.flush()

    def close(self, summary: Any = None) -> None:
        """Flush; the summary is the caller's to print (stderr, in bcc style)."""
        self.stream.flush()


def print_header(stream: TextIO, time_mode: TimeMode = TimeMode.RELATIVE) -> None:
    """Print the column titles on `stream`."""
    stream.write(format_header(time_mode) + "\n")
