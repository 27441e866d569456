"""Metrics: what the kernel aggregated, named, summed and rated.

The harvest program (kernel/bpf/harvest.c) keeps, per CPU and per
(pid, probe site, topic id), a count, the sum/min/max and log2 histogram
of one integer argument, and the log2 histogram of the ns between records
(for span ends: the span's duration is the value). It reads these from the
probe's registers, never from user memory, and copies no record.

Here the controller names each key (process, topic), sums the slots of one
(pid, topic) -- CPUs, and the sites of a C topic recorded from several
places -- and, for `--by topic`, sums a topic over every process: the
kernel aggregates per process, the controller across processes.

Choosing the argument: a SPEC item may end with `@N` (N from 0 to 3), as in
`sent@1` (aggregate args[1] of topic `sent`) or `net.*@2`; the `@` keeps
`:` free, the spec separator. Only args[0..3] travel in registers.

>>> spec, choice = parse_value_spec("net.*@1:-debug")
>>> [item.text for item in spec.items], choice("net_sent"), choice("other")
(['net.*', '-debug'], 1, None)
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.errors import TracerError
from recorder_tracer.kernel.harvest import VALUE_ARGS, SiteStats
from recorder_tracer.target.dynamic import DYNAMIC_PROBE

GROUPINGS = ("topic", "pid", "comm")
_VALUE_SUFFIX = re.compile(r"^(?P<item>.+)@(?P<arg>[^@]*)$")


def parse_value_spec(*specs: str) -> tuple[TopicSpec, Callable[[str], int | None]]:
    """The topic spec without its `@N` suffixes, and a function naming the
    argument a topic aggregates (None: the default, args[0]); the last item
    that matches a topic and has a suffix decides."""
    items: list[str] = []
    choices: list[tuple[re.Pattern[str] | None, int]] = []
    for spec in specs:
        for text in re.split(r"[:\s]+", spec.strip()):
            if not text:
                continue
            match = _VALUE_SUFFIX.match(text)
            if match is None:
                items.append(text)
                continue
            raw = match["arg"]
            if not raw.isdigit() or int(raw) >= VALUE_ARGS:
                raise TracerError(f"argument index {raw!r} in {text!r}: expected "
                                  f"0 to {VALUE_ARGS - 1} (args[0..3] are aggregated)")
            items.append(match["item"])
            body = match["item"].lstrip("-/").split("=")[0]
            pattern = None if body == "all" else re.compile(body, re.IGNORECASE)
            choices.append((pattern, int(raw)))
    topic_spec = TopicSpec.parse(*items)

    def choice(topic: str) -> int | None:
        chosen = None
        for pattern, arg in choices:
            if pattern is None or pattern.fullmatch(topic):
                chosen = arg
        return chosen
    return topic_spec, choice


@dataclass
class TopicMetrics:
    """One row: a topic in a process (or summed by topic, pid or comm)."""

    topic: str
    pid: int | None
    comm: str
    stats: SiteStats
    rate: float = 0.0           # records/s over the last interval

    @property
    def mean(self) -> float | None:
        """The mean value, or None when no record carried one."""
        return self.stats.sum / self.stats.valued if self.stats.valued else None

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict: histograms as [low, high, count] triples of
        their non-empty buckets (a value v is in bucket [low, high))."""
        stats = self.stats
        return {
            "topic": self.topic, "pid": self.pid, "comm": self.comm,
            "count": stats.count, "rate": round(self.rate, 3),
            "value": {
                "arg": stats.arg, "span_duration_ns": stats.spans,
                "count": stats.valued, "sum": stats.sum, "min": stats.min,
                "max": stats.max, "mean": self.mean,
                "histogram": histogram_rows(stats.values),
            },
            "interval_ns": {"histogram": histogram_rows(stats.intervals)},
        }


def bucket_bounds(index: int) -> tuple[int, int]:
    """[low, high) of log2 bucket `index` (0 holds 0 and negatives).

    >>> [bucket_bounds(i) for i in range(4)]
    [(0, 1), (1, 2), (2, 4), (4, 8)]
    """
    return (0, 1) if index == 0 else (1 << (index - 1), 1 << index)


def histogram_rows(buckets: list[int]) -> list[list[int]]:
    """[low, high, count] of each non-empty bucket.

    >>> histogram_rows([0, 2, 0, 5] + [0] * 60)
    [[1, 2, 2], [4, 8, 5]]
    """
    return [[*bucket_bounds(index), count]
            for index, count in enumerate(buckets) if count]


@dataclass
class _Previous:
    counts: dict[tuple[int, str], int] = field(default_factory=dict)
    when: float = 0.0


class MetricsReader:
    """Reads a session's kernel metrics as named rows, with rates.

    `session` is a TraceSession in metrics-only mode (or any object with
    `site_stats()`, `processes` and `exited`)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self._previous = _Previous(when=time.monotonic())

    def read(self) -> list[TopicMetrics]:
        """One row per (pid, topic), rates since the previous read."""
        rows: dict[tuple[int, str], TopicMetrics] = {}
        for key, stats in self.session.site_stats().items():
            process = (self.session.processes.get(key.pid)
                       or self.session.exited.get(key.pid))
            topic, comm = _name(process, key)
            row = rows.get((key.pid, topic))
            if row is None:
                rows[(key.pid, topic)] = TopicMetrics(topic, key.pid, comm,
                                                      _copy(stats))
            else:
                row.stats.add(stats)
        now = time.monotonic()
        elapsed = max(now - self._previous.when, 1e-9)
        for name, row in rows.items():
            before = self._previous.counts.get(name, 0)
            row.rate = max(0, row.stats.count - before) / elapsed
        self._previous = _Previous({name: row.stats.count
                                    for name, row in rows.items()}, now)
        return sorted(rows.values(), key=lambda row: (row.topic, row.pid or 0))


def _name(process: Any, key: Any) -> tuple[str, str]:
    """(topic, comm) of a stats key."""
    if process is None:
        return (f"topic{key.topic_id}" if key.topic_id is not None else
                f"site{key.address:#x}"), "?"
    if key.topic_id is None:
        topic = process.topic_at(key.address)
        return topic or f"site{key.address:#x}", process.comm
    known = process.topics.get(key.topic_id)
    name = known.name if known is not None else f"topic{key.topic_id}"
    return (DYNAMIC_PROBE if name is None else name), process.comm


def _copy(stats: SiteStats) -> SiteStats:
    total = SiteStats()
    total.add(stats)
    total.arg = stats.arg
    return total


def group(rows: Iterable[TopicMetrics], by: str) -> list[TopicMetrics]:
    """Rows summed by `by`: "topic" (over processes), "pid" or "comm"
    (over topics); "pid" with one topic per row is the rows themselves.

    >>> rows = [TopicMetrics("t", 1, "a", SiteStats(count=2)),
    ...         TopicMetrics("t", 2, "a", SiteStats(count=3))]
    >>> [(r.topic, r.pid, r.stats.count) for r in group(rows, "topic")]
    [('t', None, 5)]
    """
    if by not in GROUPINGS:
        raise TracerError(f"cannot group by {by!r}: choose {', '.join(GROUPINGS)}")
    grouped: dict[Any, TopicMetrics] = {}
    for row in rows:
        name = {"topic": row.topic, "pid": row.pid, "comm": row.comm}[by]
        total = grouped.get(name)
        if total is None:
            grouped[name] = TopicMetrics(
                row.topic if by == "topic" else "*",
                row.pid if by == "pid" else None,
                row.comm if by != "topic" else "*", _copy(row.stats), row.rate)
        else:
            total.stats.add(row.stats)
            total.rate += row.rate
    return list(grouped.values())


def metrics_options(pids: Iterable[int] = (), comms: Iterable[str] = (),
                    all_processes: bool = False, command: list[str] | None = None,
                    specs: Iterable[str] = (), duration: float | None = None) -> Any:
    """TraceOptions for a metrics-only session (the kernel aggregates,
    nothing is copied); SPEC items may choose an argument with `@N`."""
    from recorder_tracer.session.loop import TraceOptions
    spec, choice = parse_value_spec(*specs)
    return TraceOptions(pids=list(pids), comms=list(comms),
                        all_processes=all_processes, command=command, spec=spec,
                        duration=duration, metrics_only=True, value_arg=choice)


def watch(session: Any, on_rows: Callable[[list[TopicMetrics]], None],
          interval: float | None = None, count: int | None = None) -> None:
    """Run a started metrics session: hand `on_rows` the rows every
    `interval` seconds (stopping after `count` of them), and once more at
    the end (Ctrl-C, the duration, -c's end, or every -p process gone)
    unless the last interval just did. Closes the session."""
    reader = MetricsReader(session)
    shown = 0
    fresh = False
    due = time.monotonic() + interval if interval else None
    try:
        while session.poll(timeout_ms=50):
            fresh = False
            if due is not None and time.monotonic() >= due:
                due += interval or 0
                on_rows(reader.read())
                shown += 1
                fresh = True
                if count is not None and shown >= count:
                    return
        # Names are resolved while the processes' images are open.
        if not fresh:
            on_rows(reader.read())
    finally:
        session.close()
