"""A decoded record: what a writer, a renderer or an exporter receives."""

from __future__ import annotations

from dataclasses import dataclass, field

from recorder_tracer.abi import ENTRY_SPAN_END
from recorder_tracer.target.notes import RECORDER_PROVIDER

Arg = int | float | str | None


@dataclass(frozen=True, slots=True)
class Record:
    """One record, decoded: its arguments are values, its message formatted.

    `ts` is in ns of CLOCK_MONOTONIC (the clock of bpf_ktime_get_ns and of
    the proc connector). An argument is None where it could not be read
    (a string BPF could not fetch).

    >>> Record(ts=1_500, pid=7, tid=8, comm="app", topic="net", where="a.c:3",
    ...        message="sent 4", args=[4], cpu=0).provider
    'recorder'
    """

    ts: int
    pid: int
    tid: int
    comm: str
    topic: str
    where: str
    message: str
    args: list[Arg] = field(default_factory=list)
    cpu: int = 0
    provider: str = RECORDER_PROVIDER
    # The entry's flags (abi.ENTRY_SPAN_BEGIN, ENTRY_SPAN_END...): what
    # tells a span's begin from its end; 0 for a USDT hit.
    flags: int = 0

    @property
    def span_duration_ns(self) -> int | None:
        """A span end's duration (args[0], ns); None for any other record.

        >>> Record(1, 1, 1, "a", "t", "?", "end", [250], flags=ENTRY_SPAN_END
        ...        ).span_duration_ns
        250
        """
        if (self.flags & ENTRY_SPAN_END and self.args
                and isinstance(self.args[0], int)):
            return self.args[0]
        return None
