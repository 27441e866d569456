"""Every guest's metrics on the collector's one /metrics, with a `guest` label.

Each guest's daemon sends its exposition text every interval; at a scrape
this collector parses the latest of each (once per new text), adds the
labels `guest` (its folder's hostname) and `boot` (its boot id's first 8
characters), and merges families of the same name across guests. The
collector's own figures per guest come with it:

  recorder_collect_items_total{guest,boot,kind}     items written
  recorder_collect_gap_items_total{guest,boot}      frames that never came
  recorder_collect_clock_offset_seconds{guest,boot} guest clock - host clock
  recorder_collect_clock_uncertainty_seconds{...}   its bound
  recorder_collect_connected{guest,boot}            1 while connected
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

LABELS = ["guest", "boot"]


class GuestMetrics(Collector):
    """A prometheus-client Collector over the collector's guest states."""

    def __init__(self, states: Callable[[], list[Any]]) -> None:
        self.states = states
        self._parsed: dict[int, tuple[int, list[Metric]]] = {}

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        items = CounterMetricFamily("recorder_collect_items",
                                    "Items the collector wrote, per guest.",
                                    labels=[*LABELS, "kind"])
        gaps = CounterMetricFamily("recorder_collect_gap_items",
                                   "Frames the guest sent that never arrived.",
                                   labels=LABELS)
        offset = GaugeMetricFamily("recorder_collect_clock_offset_seconds",
                                   "The guest's clock minus the collector's.",
                                   labels=LABELS)
        uncertainty = GaugeMetricFamily(
            "recorder_collect_clock_uncertainty_seconds",
            "How far a host-aligned time may be off.", labels=LABELS)
        connected = GaugeMetricFamily("recorder_collect_connected",
                                      "1 while the guest is connected.",
                                      labels=LABELS)
        for state in self.states():
            labels = [state.label, state.store.boot_id[:8]]
            for kind in ("records", "console", "metrics", "snapshots"):
                items.add_metric([*labels, kind], state.counts[kind])
            gaps.add_metric(labels, state.counts["gap_frames"])
            summary = state.clock.summary()
            offset.add_metric(labels, summary["offset_ns"] / 1e9)
            uncertainty.add_metric(labels, summary["uncertainty_ns"] / 1e9)
            connected.add_metric(labels, 1.0 if state.link is not None else 0.0)
            for family in self._families(state):
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit)
                for sample in family.samples:
                    into.samples.append(sample._replace(labels={
                        **sample.labels, "guest": labels[0], "boot": labels[1]}))
        yield from merged.values()
        yield from (items, gaps, offset, uncertainty, connected)

    def _families(self, state: Any) -> list[Metric]:
        key = id(state)
        cached = self._parsed.get(key)
        if cached is not None and cached[0] == state.metrics_version:
            return cached[1]
        try:
            families = list(text_string_to_metric_families(state.metrics_text))
        except ValueError:
            families = []       # a guest's garbage costs only its own metrics
        # The guest's own process figures would clash with ours.
        families = [family for family in families
                    if not family.name.startswith(("process_", "python_"))]
        self._parsed[key] = (state.metrics_version, families)
        return families
