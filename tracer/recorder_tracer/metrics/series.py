"""One topic argument as a time series: CSV and PNG (`metrics --series`).

What the seed library's scope plotted: the value of one argument of each
record of a topic, in time. Unlike the kernel aggregates, a series needs
every record, so it reads them through the trace stream (a trace session
armed for that one topic) and keeps (time, pid, value) per record.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass

from recorder_tracer.decode.record import Record
from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.errors import TracerError


@dataclass(frozen=True)
class SeriesOptions:
    """TOPIC[:ARG] and where to write it."""

    topic: str
    arg: int = 0
    csv: str | None = None
    png: str | None = None

    @classmethod
    def parse(cls, text: str, csv: str | None = None,
              png: str | None = None) -> SeriesOptions:
        """`tick` or `tick:2`.

        >>> SeriesOptions.parse("net_sent:1").arg
        1
        """
        topic, _, raw = text.partition(":")
        if not topic:
            raise TracerError(f"--series {text!r}: expected TOPIC[:ARG]")
        if raw and not raw.isdigit():
            raise TracerError(f"--series {text!r}: ARG must be an argument index")
        arg = int(raw) if raw else 0
        if arg >= 12:
            raise TracerError(f"--series {text!r}: a record has at most 12 arguments")
        return cls(topic, arg, csv, png)


@dataclass
class Point:
    """One record's value."""

    seconds: float      # since the first point
    pid: int
    value: float


class SeriesSink:
    """Keeps the chosen argument of each record of the topic."""

    def __init__(self, options: SeriesOptions) -> None:
        self.options = options
        self.points: list[Point] = []
        self._first_ns: int | None = None

    def __call__(self, record: Record) -> None:
        if record.topic != self.options.topic or self.options.arg >= len(record.args):
            return
        value = record.args[self.options.arg]
        if not isinstance(value, int | float):
            return                  # a string or an unreadable argument
        if self._first_ns is None:
            self._first_ns = record.ts
        self.points.append(Point((record.ts - self._first_ns) / 1e9, record.pid,
                                 float(value)))

    def write(self) -> None:
        """Write the CSV and/or PNG the options name."""
        if self.options.csv:
            with open(self.options.csv, "w", newline="") as file:
                writer = csv.writer(file)
                writer.writerow(["time_s", "pid", "value"])
                for point in self.points:
                    writer.writerow([f"{point.seconds:.9f}", point.pid,
                                     f"{point.value:g}"])
        if self.options.png:
            self._plot(self.options.png)

    def _plot(self, path: str) -> None:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot
        figure, axes = pyplot.subplots(figsize=(8, 3.5), dpi=100)
        for pid in sorted({point.pid for point in self.points}):
            mine = [point for point in self.points if point.pid == pid]
            axes.plot([p.seconds for p in mine], [p.value for p in mine],
                      marker=".", linewidth=1, label=f"pid {pid}")
        axes.set_xlabel("seconds")
        axes.set_ylabel(f"{self.options.topic} args[{self.options.arg}]")
        axes.set_title(f"recorder: {self.options.topic}")
        if self.points:
            axes.legend(loc="best")
        figure.tight_layout()
        try:
            figure.savefig(path)
        except OSError as error:
            raise TracerError(f"cannot write {path}: {error.strerror}") from None
        finally:
            pyplot.close(figure)


def record_series(options: SeriesOptions, pids: list[int], comms: list[str],
                  all_processes: bool, command: list[str] | None,
                  duration: float | None) -> int:
    """Trace the topic until the session ends, write the files; returns
    the number of points."""
    from recorder_tracer.session.loop import TraceOptions, TraceSession
    sink = SeriesSink(options)
    session = TraceSession(TraceOptions(
        pids=pids, comms=comms, all_processes=all_processes, command=command,
        spec=TopicSpec.parse(re.escape(options.topic)), duration=duration), sink)
    session.run()
    sink.write()
    return len(sink.points)
