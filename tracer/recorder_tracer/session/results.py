"""What a trace session yields besides its records: per-CPU loss accounting,
the kernel's aggregates per site, the kernel flight ring; final after
close(), which keeps them before it frees the kernel objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recorder_tracer.decode.record import Record
from recorder_tracer.kernel.harvest import SiteKey, SiteStats
from recorder_tracer.kernel.stream import CpuSummary, Stream
from recorder_tracer.selftrace import SESSION

if TYPE_CHECKING:
    import threading

    from recorder_tracer.session.topics import RecorderTopics
    from recorder_tracer.session.usdt import UsdtSource


class SessionResults:
    """The results half of TraceSession (session/loop.py)."""

    recorder: RecorderTopics | None
    usdt: UsdtSource | None
    _lock: threading.RLock
    _final_summaries: list[CpuSummary] | None
    _final_stats: dict[SiteKey, SiteStats] | None

    def _streams(self) -> list[Stream]:
        raise NotImplementedError

    def decode(self, cpu: int, raw: Any) -> Record:
        """A harvest record of the recorder topics' stream."""
        assert self.recorder is not None, "decoding needs recorder topics"
        return self.recorder.decode(cpu, raw)

    def flight_records(self) -> list[Record]:
        """The records in the kernel flight ring, in time order (see
        RecorderTopics.flight_records)."""
        return self.recorder.flight_records() if self.recorder is not None else []

    def topic_counts(self) -> dict[SiteKey, int]:
        """Hits the kernel counted per (pid, site); final after close()."""
        return {key: stats.count for key, stats in self.site_stats().items()}

    def site_stats(self) -> dict[SiteKey, SiteStats]:
        """What the kernel aggregated per (pid, site, topic id); final after
        close()."""
        if self._final_stats is not None:
            return self._final_stats
        return self.recorder.site_stats() if self.recorder is not None else {}

    def forget(self, pid: int) -> None:
        """Drop what is kept of an exited process: its image and its
        kernel metrics (the daemon calls this after a grace period)."""
        with self._lock:
            if self.recorder is not None:
                self.recorder.forget(pid, metrics=self._final_stats is None)

    def summaries(self) -> list[CpuSummary]:
        """Per-CPU produced, received and lost over every stream; final
        after close()."""
        if self._final_summaries is not None:
            return self._final_summaries
        return self._sum_streams()

    def _sum_streams(self) -> list[CpuSummary]:
        totals: dict[int, CpuSummary] = {}
        for stream in self._streams():
            for cpu in stream.summary():
                seen = totals.get(cpu.cpu)
                totals[cpu.cpu] = cpu if seen is None else CpuSummary(
                    cpu.cpu, seen.produced + cpu.produced,
                    seen.received + cpu.received, seen.lost + cpu.lost)
        return [totals[cpu] for cpu in sorted(totals)]

    def topic_losses(self) -> dict[tuple[int, str], Any]:
        """Batch mode: per (pid, topic), what became of the records made
        since armed (kernel/batch.py TopicLoss); final after close()."""
        losses = getattr(self.recorder, "topic_losses", None)
        return losses() if losses is not None else {}

    @property
    def unknown_sites(self) -> int:
        """USDT hits whose site was not known yet (their arguments lost)."""
        return self.usdt.unknown_sites if self.usdt is not None else 0

    def _keep_totals(self) -> None:
        self._final_summaries = self._sum_streams()
        self._final_stats = self.site_stats()

    def _record_totals(self) -> None:
        for cpu in self.summaries():
            SESSION.record("closed: CPU %d produced %d, received %d, lost %d",
                           cpu.cpu, cpu.produced, cpu.received, cpu.lost)
