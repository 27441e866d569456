"""Writers of decoded records to files: JSON lines and Chrome trace events.

Every writer streams: `write(record)` emits the record at once (nothing is
buffered for the end), and `close(summary)` ends the file with the per-CPU
received and lost counts, so a reader can check received + lost = produced.

    with open_writer("jsonl", sys.stdout) as writer:   # output/sinks.py
        for record in records:
            writer.write(record)
        writer.summary = stream.summary()
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any, Protocol, TextIO

from recorder_tracer.decode.record import Arg, Record


class CpuCounts(Protocol):
    """What a summary needs of one CPU (stream.CpuSummary has it)."""

    @property
    def cpu(self) -> int: ...
    @property
    def received(self) -> int: ...
    @property
    def lost(self) -> int: ...


class Writer:
    """Base of the record writers: a context manager that closes once.

    With `flush`, the stream is flushed after every record, so a reader at
    the other end of a pipe sees each record as it comes.
    """

    flush_each_default = False

    def __init__(self, stream: TextIO, flush: bool | None = None) -> None:
        self.stream = stream
        self.flush_each = self.flush_each_default if flush is None else flush
        self.closed = False
        self.count = 0
        self.summary: Iterable[CpuCounts] = ()
        self.anchor = clock_anchor()

    def write(self, record: Record) -> None:
        """Write one record."""
        raise NotImplementedError

    def close(self, summary: Iterable[CpuCounts] | None = None) -> None:
        """End the output with `summary` (or `self.summary`); idempotent.

        The stream itself is left open: it belongs to the caller.
        """
        if self.closed:
            return
        self.closed = True
        chosen = self.summary if summary is None else summary
        self._finish(Summary(chosen, getattr(chosen, "topics", None),
                             getattr(chosen, "kernel_skipped", None)))
        self.stream.flush()

    def _finish(self, summary: list[CpuCounts]) -> None:
        raise NotImplementedError

    def _emit(self, text: str) -> None:
        self.stream.write(text)
        if self.flush_each:
            self.stream.flush()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def json_value(value: Arg) -> Arg:
    """An argument as JSON can hold it: non-finite floats become strings.

    >>> [json_value(v) for v in (1, 2.5, float("inf"), float("nan"), None)]
    [1, 2.5, 'inf', 'nan', None]
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Summary(list):  # type: ignore[type-arg]
    """Per-CPU counts, in batch mode per (pid, topic) counts (`topics`:
    dicts of pid, topic, produced, streamed, overwritten, refused), and the
    program runs the kernel skipped, which JSON summaries carry."""

    def __init__(self, counts: Iterable[CpuCounts] = (),
                 topics: list[dict[str, Any]] | None = None,
                 kernel_skipped: int | None = None) -> None:
        super().__init__(counts)
        self.topics = topics
        # Program runs the kernel skipped (BPF recursion), outside the
        # per-CPU counts: session/results.py kernel_skipped().
        self.kernel_skipped = kernel_skipped


def clock_anchor() -> dict[str, int | str]:
    """Record times (CLOCK_MONOTONIC ns) against wall-clock time, read now:
    wall = ts + wall_offset_ns (valid until the next boot or clock step).

    >>> anchor = clock_anchor()
    >>> anchor["wall_ns"] - anchor["monotonic_ns"] == anchor["wall_offset_ns"]
    True
    """
    monotonic = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    wall = time.clock_gettime_ns(time.CLOCK_REALTIME)
    return {"clock": "CLOCK_MONOTONIC", "monotonic_ns": monotonic, "wall_ns": wall,
            "wall_offset_ns": wall - monotonic}


def summary_json(summary: Iterable[CpuCounts]) -> dict[str, Any]:
    """Per-CPU received and lost counts (and produced when known), with totals.

    >>> from types import SimpleNamespace as C
    >>> summary_json([C(cpu=0, received=5, lost=1)])
    {'cpus': [{'cpu': 0, 'received': 5, 'lost': 1}], 'received': 5, 'lost': 1}
    """
    cpus = []
    for counts in sorted(summary, key=lambda c: c.cpu):
        row = {"cpu": counts.cpu, "received": counts.received, "lost": counts.lost}
        produced = getattr(counts, "produced", None)
        if produced is not None:
            row["produced"] = produced
        cpus.append(row)
    result = {
        "cpus": cpus,
        "received": sum(row["received"] for row in cpus),
        "lost": sum(row["lost"] for row in cpus),
    }
    topics = getattr(summary, "topics", None)   # batch mode: per (pid, topic)
    if topics is not None:
        result["topics"] = topics
    skipped = getattr(summary, "kernel_skipped", None)
    if skipped is not None:
        result["kernel_skipped"] = skipped
    return result
