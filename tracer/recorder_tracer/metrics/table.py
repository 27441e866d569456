"""Metrics as a rich table, histograms drawn as bars (recorder metrics, top).

Each log2 histogram is drawn on one line: the range its non-empty buckets
span, then one bar per bucket, its height the bucket's share of the
largest (`1..16 ▂█▅▁`: values from 1 to under 16).
"""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from recorder_tracer.metrics.aggregates import TopicMetrics, bucket_bounds
from recorder_tracer.terminal import escape_controls

BARS = " ▁▂▃▄▅▆▇█"
# Columns `recorder top` can sort by, with the row's sort key.
SORT_KEYS = {
    "rate": lambda row: row.rate,
    "count": lambda row: row.stats.count,
    "topic": lambda row: row.topic,
    "pid": lambda row: row.pid or 0,
    "mean": lambda row: row.mean or 0,
    "max": lambda row: row.stats.max or 0,
}


def bars(buckets: list[int], width: int = 16) -> str:
    """One histogram line: range of the non-empty buckets, then a bar each.

    >>> bars([0, 1, 4, 2] + [0] * 60)
    '1..8 ▂█▄'
    """
    used = [index for index, count in enumerate(buckets) if count]
    if not used:
        return ""
    first, last = used[0], min(used[-1], used[0] + width - 1)
    peak = max(buckets[first:last + 1])
    line = "".join(BARS[max(1, round(8 * count / peak)) if count else 0]
                   for count in buckets[first:last + 1])
    return f"{_short(bucket_bounds(first)[0])}..{_short(bucket_bounds(last)[1])} {line}"


def _short(value: int) -> str:
    """1536 -> '1.5K': short numbers for histogram ranges.

    >>> _short(0), _short(999), _short(1 << 20), _short(3 * 10**9)
    ('0', '999', '1M', '3G')
    """
    for unit, scale in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return str(value)


def _duration(ns: int) -> str:
    return f"{_short(ns)}ns"


def console(file: TextIO | None = None) -> Console:
    """A console for tables: the terminal's width, or wide enough for a
    table's rows when writing to a file or a pipe (never wrapped)."""
    stream = file if file is not None else sys.stdout
    return Console(file=stream, width=None if stream.isatty() else 200)


def metrics_table(rows: list[TopicMetrics], title: str | None = None,
                  sort: str | None = None, reverse: bool = True) -> Table:
    """The table of `rows` (sorted by `sort`, one of SORT_KEYS, if given)."""
    if sort is not None:
        rows = sorted(rows, key=SORT_KEYS[sort], reverse=reverse)
    table = Table(title=title, title_justify="left", box=None, pad_edge=False,
                  header_style="bold")
    for name, justify in (("TOPIC", "left"), ("PID", "right"), ("COMM", "left"),
                          ("COUNT", "right"), ("RATE/s", "right"),
                          ("ARG", "right"), ("MIN", "right"), ("MEAN", "right"),
                          ("MAX", "right"), ("VALUES", "left"),
                          ("INTERVAL ns", "left")):
        style = "reverse" if sort and name.split("/")[0].lower() == sort else None
        table.add_column(name, justify=justify, header_style=style,  # type: ignore[arg-type]
                         no_wrap=True)
    for row in rows:
        stats = row.stats
        mean = row.mean
        arg = "span" if stats.spans else f"{stats.arg}" if stats.valued else "-"
        # Text, not str: rich would read "[/x]" in a process's name as
        # markup (and raise); controls are escaped as everywhere.
        table.add_row(
            Text(escape_controls(row.topic)),
            "*" if row.pid is None else str(row.pid),
            Text(escape_controls(row.comm)),
            str(stats.count), f"{row.rate:.1f}", arg,
            "" if stats.min is None else str(stats.min),
            "" if mean is None else f"{mean:.4g}",
            "" if stats.max is None else str(stats.max),
            bars(stats.values), bars(stats.intervals))
    return table
