"""Draw named values over time: a terminal strip chart per channel, a PNG.

The seed library's scope plots channels live in a window; ours draws them
in the terminal (one band per channel: a header with the last, min and max
values, then the samples of the last `window` seconds, newest on the
right), and writes a PNG of every sample where a picture serves better.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field

from recorder_tracer.errors import TracerError
from recorder_tracer.target.channels import Sample

MAX_SAMPLES = 100_000       # per channel: what a PNG can show, bounded


@dataclass
class Trace:
    """The samples of one channel, and its extremes over all of them."""

    name: str
    points: deque[tuple[int, float]] = field(
        default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    count: int = 0
    low: float | None = None
    high: float | None = None

    def add(self, timestamp: int, value: float) -> None:
        self.points.append((timestamp, value))
        self.count += 1
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)


def number(value: float | None) -> str:
    """A value as the header shows it.

    >>> number(23.0), number(0.5), number(None)
    ('23', '0.5', '-')
    """
    return "-" if value is None else f"{value:g}"


@dataclass
class Scope:
    """Every channel's samples, and how to draw them."""

    names: list[str]
    traces: dict[str, Trace] = field(init=False)

    def __post_init__(self) -> None:
        self.traces = {name: Trace(name) for name in self.names}

    def add(self, samples: list[Sample]) -> None:
        for sample in samples:
            trace = self.traces.get(sample.channel)
            if trace is not None:
                trace.add(sample.timestamp, sample.value)

    def latest(self) -> int | None:
        """The newest timestamp of any channel."""
        stamps = [t.points[-1][0] for t in self.traces.values() if t.points]
        return max(stamps) if stamps else None

    def render(self, width: int = 72, rows: int = 5, window: float = 10.0,
               lost: int = 0) -> str:
        """The screen: a band of `rows` rows per channel over `window` s."""
        end = self.latest()
        lines = []
        plot_width = max(width - 12, 8)
        for trace in self.traces.values():
            last = trace.points[-1][1] if trace.points else None
            lines.append(f"{trace.name}  last {number(last)}  min {number(trace.low)}"
                         f"  max {number(trace.high)}  samples {trace.count}")
            lines.extend(self._band(trace, end, plot_width, rows, window))
        lines.append(f"window {window:g} s, newest on the right; lost {lost}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _band(trace: Trace, end: int | None, plot_width: int, rows: int,
              window: float) -> list[str]:
        grid = [[" "] * plot_width for _ in range(rows)]
        low, high = trace.low, trace.high
        if end is not None and low is not None and high is not None:
            start = end - int(window * 1e9)
            span = (high - low) or 1.0
            for timestamp, value in trace.points:
                if timestamp < start:
                    continue
                column = int((timestamp - start) / (window * 1e9) * (plot_width - 1))
                row = rows - 1 - round((value - low) / span * (rows - 1))
                grid[row][min(max(column, 0), plot_width - 1)] = "*"
        labels = [number(high)] + [""] * (rows - 2) + [number(low)] if rows > 1 \
            else [number(high)]
        band = [f"{label:>10} |{''.join(row)}" for label, row in zip(labels, grid,
                                                                     strict=True)]
        band.append(" " * 11 + "+" + "-" * plot_width)
        return band

    def json_lines(self, samples: list[Sample]) -> str:
        """One JSON object per sample: channel, ts (ns), value."""
        return "".join(json.dumps({"channel": s.channel, "ts": s.timestamp,
                                   "value": s.value}) + "\n" for s in samples)

    def write_png(self, path: str, title: str) -> None:
        """Every kept sample of every channel, one subplot each, seconds
        since the first sample on the x axis."""
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot
        traces = list(self.traces.values())
        first = min((t.points[0][0] for t in traces if t.points), default=0)
        figure, axes = pyplot.subplots(len(traces), 1, squeeze=False,
                                       figsize=(8, 2.2 * len(traces) + 0.6), dpi=100)
        for axis, trace in zip(axes[:, 0], traces, strict=True):
            axis.plot([(t - first) / 1e9 for t, _ in trace.points],
                      [v for _, v in trace.points], marker=".", linewidth=1)
            axis.set_ylabel(trace.name)
        axes[-1, 0].set_xlabel("seconds")
        figure.suptitle(title)
        figure.tight_layout()
        try:
            figure.savefig(path, metadata={
                "Description": " ".join(f"{t.name}={number(t.points[-1][1])}"
                                        for t in traces if t.points)})
        except OSError as error:
            raise TracerError(f"cannot write {path}: {error.strerror}") from None
        finally:
            pyplot.close(figure)
