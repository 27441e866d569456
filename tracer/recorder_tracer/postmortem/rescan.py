"""Which processes map a file with recorder probes, found cheaply every 2 s.

The snapshot watcher rescans the host every few seconds for cores loaded
after exec (dlopen, a Python import). Reading every process's
/proc/PID/maps (the kernel walks its mappings, we stat each mapped file)
costs tens of ms per scan with a few hundred processes, nearly all of
which map nothing of ours and never will.

A process whose maps showed no recorder file is skipped while its
/proc/PID/stat still shows the same start time (the same process) and
the same virtual size (mapping a library grows it): one small read
instead of its maps. An unchanged process is still read again after
2 s, 4, 8 ... up to 5 minutes, in case a mapping and an unmapping of the
same size fell between two scans. A process with no address space (a
kernel thread, a zombie) is never read. Processes gone from /proc are
forgotten at each scan, an exec'd one by `forget`; at most SIZE are kept
(one left out is only read sooner).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from recorder_tracer.postmortem.backoff import Backoff
from recorder_tracer.target import notes, procs

FIRST_S = 2.0
LIMIT_S = 300.0
SIZE = 65536
START_TIME, VIRTUAL_SIZE = 22, 23       # /proc/PID/stat fields (proc(5))


class MappedScan:
    """Rescans of the host for processes that map recorder probes."""

    def __init__(self, first_s: float = FIRST_S, limit_s: float = LIMIT_S,
                 size: int = SIZE) -> None:
        # Keyed by (start time, virtual size): the same process (start
        # time) keeps doubling its delay; a new size is read at once.
        self._plain = Backoff(first_s, limit_s, size, same=1)
        self.maps_read = 0      # for tests and measurements

    def __len__(self) -> int:
        return len(self._plain)

    def __contains__(self, pid: int) -> bool:
        """Whether `pid` is kept as mapping no recorder file."""
        return pid in self._plain

    def recorder_processes(self, wanted: Callable[[int], bool],
                           now: float | None = None) -> list[int]:
        """The PIDs, sorted, that map a file with recorder probes and that
        `wanted` accepts (asked before their maps are read)."""
        now = time.monotonic() if now is None else now
        found = []
        living = []
        verdicts: dict[tuple[int, int], bool] = {}     # per file, this scan
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            identity = procs.stat_fields(pid, START_TIME, VIRTUAL_SIZE)
            if identity is None or identity[1] == 0:
                continue        # gone, or no address space
            living.append(pid)
            if not self._plain.due(pid, identity, now):
                continue
            if not wanted(pid):
                self._plain.forget(pid)
            elif self._maps_recorder(pid, verdicts):
                self._plain.forget(pid)
                found.append(pid)
            else:
                self._plain.missed(pid, identity, now)
        self._plain.keep_only(living)     # only the living
        return sorted(found)

    def forget(self, pid: int) -> None:
        """`pid` exec'd or exited: read its maps at the next scan."""
        self._plain.forget(pid)

    def _maps_recorder(self, pid: int, verdicts: dict[tuple[int, int], bool]) -> bool:
        self.maps_read += 1
        try:
            return notes.maps_recorder_probes(pid, verdicts)
        except (notes.ProcessGone, PermissionError):
            return False
