"""`recorder top`: a live, refreshing view of the kernel's metrics.

One row per topic and process, sorted by rate (records/s over the last
refresh), each with its value and interval histograms drawn as small bars.
Keys: `q` quits, left/right arrows choose the sort column, up/down the
order. Reads keys from the terminal in cbreak mode (restored on exit).
Without a terminal on stdout, it prints a plain table every interval.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.live import Live

from recorder_tracer.metrics.aggregates import MetricsReader, TopicMetrics
from recorder_tracer.metrics.table import SORT_KEYS, metrics_table
from recorder_tracer.metrics.table import console as table_console

COLUMNS = list(SORT_KEYS)               # rate first: the default
KEYS = {"\x1b[C": "right", "\x1b[D": "left", "\x1b[A": "up", "\x1b[B": "down",
        "\x1bOC": "right", "\x1bOD": "left", "\x1bOA": "up", "\x1bOB": "down",
        "q": "quit", "Q": "quit"}


class TopView:
    """The sort state and what a key does to it.

    >>> view = TopView()
    >>> view.key("right"), view.sort, view.key("up"), view.descending
    (True, 'count', True, False)
    """

    def __init__(self) -> None:
        self.column = 0
        self.descending = True

    @property
    def sort(self) -> str:
        """The column rows are sorted by."""
        return COLUMNS[self.column]

    def key(self, name: str) -> bool:
        """Apply a key; False means quit."""
        if name == "quit":
            return False
        if name in ("left", "right"):
            step = 1 if name == "right" else -1
            self.column = (self.column + step) % len(COLUMNS)
        elif name in ("up", "down"):
            self.descending = name == "down"
        return True

    def render(self, rows: list[TopicMetrics]) -> Any:
        """The table, titled with the sort and the keys."""
        order = "descending" if self.descending else "ascending"
        title = (f"recorder top - {len(rows)} topics, sorted by {self.sort} "
                 f"({order}); left/right: column, up/down: order, q: quit")
        return metrics_table(rows, title=title, sort=self.sort,
                             reverse=self.descending)


@contextlib.contextmanager
def cbreak(fd: int) -> Iterator[bool]:
    """Keys arrive one by one, unechoed, while inside; yields whether `fd`
    is a terminal at all (without one, top only refreshes)."""
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def read_keys(fd: int) -> list[str]:
    """The keys typed since the last call (escape sequences whole)."""
    data = ""
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk.decode(errors="replace")
    keys = []
    while data:
        for sequence, name in KEYS.items():
            if data.startswith(sequence):
                keys.append(name)
                data = data[len(sequence):]
                break
        else:
            data = data[1:]
    return keys


def run_top(session: Any, interval: float = 1.0) -> None:
    """Show the started metrics `session` until `q`, Ctrl-C or its end;
    closes it."""
    reader = MetricsReader(session)
    view = TopView()
    console = Console()
    if not console.is_terminal:
        print_snapshots(session, reader, view, table_console(), interval)
        return
    fd = sys.stdin.fileno()
    rows = reader.read()
    try:
        with cbreak(fd) as keyboard, Live(view.render(rows), console=console,
                                          screen=True, auto_refresh=False) as live:
            due = time.monotonic() + interval
            while session.poll(timeout_ms=50):
                changed = False
                for key in read_keys(fd) if keyboard else []:
                    if not view.key(key):
                        return
                    changed = True
                if time.monotonic() >= due:
                    due = time.monotonic() + interval
                    rows = reader.read()
                    changed = True
                if changed:
                    live.update(view.render(rows), refresh=True)
    finally:
        session.close()


def print_snapshots(session: Any, reader: MetricsReader, view: TopView,
                    console: Console, interval: float) -> None:
    """Without a terminal (`recorder top | cat`, a log): a plain table,
    titled with the time, every `interval` seconds, as `top -b` does;
    closes the session."""
    try:
        due = time.monotonic() + interval
        while session.poll(timeout_ms=50):
            if time.monotonic() >= due:
                due += interval
                rows = reader.read()
                console.print(metrics_table(rows, title=time.strftime("%H:%M:%S"),
                                            sort=view.sort, reverse=view.descending))
                console.file.flush()
    finally:
        session.close()
