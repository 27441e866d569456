"""What a trace session yields besides its records: per-CPU loss accounting,
the kernel's aggregates per site, the kernel flight ring; final after
close(), which keeps them before it frees the kernel objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recorder_tracer.decode.record import Record
from recorder_tracer.kernel.arm import recursion_misses
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
    _final_recursion: int | None = None

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

    def kernel_skipped(self) -> int:
        """Runs of the session's harvest and stream programs the kernel
        skipped, each already running on that CPU (`recursion_misses`):
        outside the streams' counters, so outside their exact accounting.
        With the per-record trap each one is a record not harvested; a
        skipped batch harvest only delays its records. Final after close()."""
        if self._final_recursion is not None:
            return self._final_recursion
        skipped = 0
        for fd in self.program_fds():
            try:
                skipped += recursion_misses(fd)
            except OSError:     # unloaded meanwhile
                continue
        return skipped

    def program_fds(self) -> list[int]:
        """The fds of the programs bcc loaded for the session's streams
        (harvest, batch, USDT), while they are loaded (links run copies of
        some: kernel/arm.py copy_fd)."""
        seen: set[int] = set()
        fds = []
        for stream in self._streams():
            bpf = getattr(getattr(stream, "harvester", None), "bpf", None)
            if bpf is None or id(bpf) in seen:
                continue
            seen.add(id(bpf))
            functions = list(getattr(bpf, "funcs", {}).values())
            fds.extend(function.fd for function in functions)
        return fds

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
        self._final_recursion = None
        self._final_recursion = self.kernel_skipped()
        self._final_stats = self.site_stats()

    def _record_totals(self) -> None:
        for cpu in self.summaries():
            SESSION.record("closed: CPU %d produced %d, received %d, lost %d",
                           cpu.cpu, cpu.produced, cpu.received, cpu.lost)
        SESSION.record("closed: %d program runs skipped by the kernel",
                       self.kernel_skipped())
