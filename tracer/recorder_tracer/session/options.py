"""What a trace session traces: `TraceOptions` (see `recorder trace --help`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from recorder_tracer.decode.spec import TopicSpec

if TYPE_CHECKING:
    from recorder_tracer.postmortem.snapshot import SnapshotOptions
    from recorder_tracer.session.usdt import UsdtSelector


@dataclass
class TraceOptions:
    """What to trace; see `recorder trace --help`."""

    pids: list[int] = field(default_factory=list)
    comms: list[str] = field(default_factory=list)
    all_processes: bool = False
    command: list[str] | None = None
    spec: TopicSpec = field(default_factory=lambda: TopicSpec(()))
    duration: float | None = None
    flight_entries: int = 1024
    pages_per_cpu: int = 1024
    command_stderr: int | None = None   # fd for -c's stderr (default: ours)
    usdt: list[UsdtSelector] = field(default_factory=list)  # other programs'
    topics: bool = True     # arm recorder topics (False: the USDT probes only)
    # Metrics only (metrics/aggregates.py): the kernel aggregates, no record is
    # copied (no flight ring, no stream); `value_arg` names the args[] index
    # each topic aggregates (None: the default, args[0]).
    metrics_only: bool = False
    value_arg: Callable[[str], int | None] = lambda topic: None
    # Crash snapshots of processes with a recorder core while the session
    # runs (postmortem/snapshot.py); None: none.
    snapshots: SnapshotOptions | None = None
    # A bpffs directory (kernel/pins.py): pin the flight ring and the links,
    # so they outlive this controller; take over a previous one's. None: no.
    pin_dir: str | None = None
    # Coverage (session/coverage.py): follow what the named processes fork
    # (False: --no-children), trace every process of these cgroups.
    children: bool = True
    cgroups: list[str] = field(default_factory=list)
    # Trap at every record (uprobes, kernel/harvest.py) instead of the batch
    # harvest of the in-process rings (kernel/batch.py): each record reaches
    # us at once, at ~0.5 us a record to the traced process. The default
    # until the batch harvest is proven on the VM guest's 6.1 kernel and
    # starts within the trap's time (its program compiles in 4-7 s here).
    latency: bool = True
    # Batch mode: write the stream's messages to this file, undecoded
    # (output/capture.py; `recorder show` renders it). None: decode live.
    capture: str | None = None

    @property
    def batch(self) -> bool:
        """Stream recorder topics through the batch harvest."""
        return (self.topics and not self.metrics_only and not self.latency
                and self.pin_dir is None)
