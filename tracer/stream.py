"""Drain the per-CPU stream of harvested records, accounting for every one.

The harvest program counts, per CPU, the records it produced and those the
perf buffer refused; we count those we received. After a final drain,
received + lost = produced, per CPU, exactly: that is what `summary()`
reports and what tests check.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from recorder_tracer.harvest import Harvester

RecordHandler = Callable[[int, Any], None]


@dataclass(frozen=True)
class CpuSummary:
    """Loss accounting for one CPU."""

    cpu: int
    produced: int
    received: int
    lost: int

    @property
    def balanced(self) -> bool:
        return self.received + self.lost == self.produced


class Stream:
    """Per-CPU perf buffers of one Harvester, delivering decoded records."""

    def __init__(
        self,
        harvester: Harvester,
        on_record: RecordHandler,
        pages_per_cpu: int = 256,
        wakeup_events: int = 32,
    ) -> None:
        self.harvester = harvester
        self.on_record = on_record
        self.received: dict[int, int] = {}
        self.lost_reported: dict[int, int] = {}
        table = harvester.bpf[b"stream"]
        record_pointer = ctypes.POINTER(harvester.record_type)

        def deliver(cpu: int, data: int, size: int) -> None:
            record = ctypes.cast(data, record_pointer).contents
            self.received[cpu] = self.received.get(cpu, 0) + 1
            self.on_record(cpu, record)

        for cpu in self._online_cpus():
            self.received[cpu] = 0
            self.lost_reported[cpu] = 0
            # bcc's public open_perf_buffer hides which CPU lost records.
            table._open_perf_buffer(
                cpu, deliver, pages_per_cpu, self._lost_callback(cpu),
                wakeup_events,
            )

    def _lost_callback(self, cpu: int) -> Callable[[int], None]:
        def lost(count: int) -> None:
            self.lost_reported[cpu] += count
        return lost

    @staticmethod
    def _online_cpus() -> list[int]:
        from bcc.utils import get_online_cpus
        return list(get_online_cpus())

    def poll(self, timeout_ms: int = 100) -> None:
        """Deliver what arrived within `timeout_ms`, then what sits below
        the wakeup threshold."""
        self.harvester.bpf.perf_buffer_poll(timeout=timeout_ms)
        self.harvester.bpf.perf_buffer_consume()

    def drain(self) -> None:
        """Deliver everything still buffered."""
        for _ in range(3):
            self.harvester.bpf.perf_buffer_consume()

    def summary(self) -> list[CpuSummary]:
        """Per-CPU produced, received and lost; call after drain()."""
        result = []
        for counters in self.harvester.counters():
            received = self.received.get(counters.cpu, 0)
            produced = counters.streamed + counters.stream_failed
            result.append(
                CpuSummary(counters.cpu, produced, received,
                           counters.stream_failed)
            )
        return result
