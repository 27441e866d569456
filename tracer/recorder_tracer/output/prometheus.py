"""Kernel metrics in the Prometheus/OpenMetrics exposition format.

A prometheus-client Collector: at each scrape it asks for a fresh snapshot
(rows of metrics/aggregates.py and the harvest program's own counters) and
yields, per label set (`by`: "pid" (topic, comm, pid: the default), "comm"
(topic, comm: summed over the processes of a name, so restarts make no new
series) or "topic" (summed over processes)):

  recorder_records_total                 counter: records made
  recorder_value                         histogram of the aggregated argument
                                         (label `arg`), _sum/_count exact
  recorder_span_duration_seconds         histogram of span durations
  recorder_record_interval_seconds       histogram of the time between records

and the tracer's own: recorder_tracer_hits_total (probe hits),
recorder_tracer_lost_records_total (hits no metrics slot could hold),
recorder_tracer_dropped_series (label sets over the cap), and
recorder_tracer_processes (processes armed), and recorder_build_info
(version labels, value 1).

Buckets are the kernel's log2 ones, read cumulatively: `le` is the largest
integer value (ns for times) a bucket holds, 2^i - 1, written exactly
(4.095e-06 s, never 4.095000000000001e-06); values use buckets up to 2^32,
times from 1 us to ~69 s, then +Inf.
"""

from __future__ import annotations

import copy
import platform
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from recorder_tracer import __version__
from recorder_tracer.metrics.aggregates import TopicMetrics

LABEL_SETS = {"pid": ["topic", "comm", "pid"], "comm": ["topic", "comm"],
              "topic": ["topic"]}
LABELS = LABEL_SETS["pid"]
VALUE_BUCKETS = range(0, 33)        # le = 2^i - 1: 0 .. 4G
TIME_BUCKETS = range(10, 37)        # 1 us .. 69 s (ns 2^10 .. 2^36)


@dataclass
class Snapshot:
    """What one scrape exports."""

    rows: list[TopicMetrics] = field(default_factory=list)
    hits: int = 0
    lost: int = 0
    dropped_series: int = 0
    processes: int = 0
    snapshots_written: int = 0
    snapshots_failed: int = 0


def cumulative(buckets: list[int], bounds: range, divisor: int = 1
               ) -> list[tuple[str, float]]:
    """(le, cumulative count) pairs for a log2 histogram, +Inf last; `le`
    is 2^i - 1 divided by `divisor` (10**9: ns to s), correctly rounded.

    >>> cumulative([1, 2, 3, 4] + [0] * 60, range(0, 3))
    [('0.0', 1), ('1.0', 3), ('3.0', 6), ('+Inf', 10)]
    >>> cumulative([0] * 64, range(12, 13), 10**9)[0][0]
    '4.095e-06'
    """
    pairs: list[tuple[str, float]] = []
    for index in bounds:
        # One division of exact integers: the nearest double, whose repr is
        # the short decimal (a product by 1e-9 would round twice).
        le = ((1 << index) - 1) / divisor
        pairs.append((repr(le), sum(buckets[:index + 1])))
    pairs.append(("+Inf", sum(buckets)))
    return pairs


def group_rows(rows: Iterable[TopicMetrics], by: str) -> list[TopicMetrics]:
    """Rows summed per label set of `by` (see LABEL_SETS).

    >>> from recorder_tracer.metrics.aggregates import SiteStats
    >>> rows = [TopicMetrics("t", 1, "a", SiteStats(count=2)),
    ...         TopicMetrics("t", 2, "a", SiteStats(count=3))]
    >>> [(r.topic, r.comm, r.stats.count) for r in group_rows(rows, "comm")]
    [('t', 'a', 5)]
    """
    if by == "pid":
        return list(rows)
    grouped: dict[tuple[str, ...], TopicMetrics] = {}
    for row in rows:
        key = (row.topic, row.comm) if by == "comm" else (row.topic,)
        total = grouped.get(key)
        if total is None:
            grouped[key] = TopicMetrics(row.topic, None, row.comm if by == "comm"
                                        else "*", copy.deepcopy(row.stats), row.rate)
        else:
            total.stats.add(row.stats)
            total.rate += row.rate
    return list(grouped.values())


def label_values(row: TopicMetrics, by: str) -> list[str]:
    """The row's label values, in LABEL_SETS[by]'s order."""
    return [row.topic, row.comm, str(row.pid)][:len(LABEL_SETS[by])]


class RecorderCollector(Collector):
    """Yields the metrics of `snapshot()` at every scrape, labelled per `by`."""

    def __init__(self, snapshot: Callable[[], Snapshot], by: str = "pid") -> None:
        if by not in LABEL_SETS:
            raise ValueError(f"cannot label by {by!r}")
        self.snapshot = snapshot
        self.by = by

    def collect(self) -> Iterator[Metric]:
        """One scrape: read the kernel's tables now."""
        snap = self.snapshot()
        names = LABEL_SETS[self.by]
        records = CounterMetricFamily("recorder_records", "Records made, per topic "
                                      "and process (counted in the kernel)",
                                      labels=names)
        values = HistogramMetricFamily(
            "recorder_value", "The aggregated integer argument of each record "
            "(args[arg]; SPEC `TOPIC@N` chooses)", labels=[*names, "arg"])
        spans = HistogramMetricFamily("recorder_span_duration_seconds",
                                      "Durations of spans (SPAN_END records)",
                                      labels=names)
        intervals = HistogramMetricFamily(
            "recorder_record_interval_seconds",
            "Time between successive records of a topic in a process "
            "(per probe site and CPU)", labels=names)
        for row in group_rows(snap.rows, self.by):
            labels = label_values(row, self.by)
            stats = row.stats
            records.add_metric(labels, stats.count)
            if stats.spans:
                spans.add_metric(labels, cumulative(stats.values, TIME_BUCKETS, 10**9),
                                 stats.sum / 1e9)
            elif stats.valued:
                values.add_metric([*labels, str(stats.arg)],
                                  cumulative(stats.values, VALUE_BUCKETS), stats.sum)
            if any(stats.intervals):
                intervals.add_metric(labels,
                                     cumulative(stats.intervals, TIME_BUCKETS, 10**9),
                                     stats.interval_sum / 1e9)
        yield from (records, values, spans, intervals)
        yield CounterMetricFamily("recorder_tracer_hits", "Probe hits the harvest "
                                  "program ran for", value=snap.hits)
        yield CounterMetricFamily("recorder_tracer_lost_records", "Hits no metrics "
                                  "slot could count (table full)", value=snap.lost)
        yield GaugeMetricFamily("recorder_tracer_dropped_series", "Label sets not "
                                "exported: over the daemon's cap",
                                value=snap.dropped_series)
        yield GaugeMetricFamily("recorder_tracer_processes", "Processes armed",
                                value=snap.processes)
        yield CounterMetricFamily("recorder_snapshots_written", "Crash snapshots "
                                  "written", value=snap.snapshots_written)
        yield CounterMetricFamily("recorder_snapshots_failed", "Crash snapshots "
                                  "that could not be written (disk full...)",
                                  value=snap.snapshots_failed)
        info = GaugeMetricFamily("recorder_build_info", "The recorder tracer's "
                                 "version (value 1)",
                                 labels=["version", "python"])
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
