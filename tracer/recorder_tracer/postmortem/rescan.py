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
from dataclasses import dataclass

from recorder_tracer.target import notes

FIRST_S = 2.0
LIMIT_S = 300.0
SIZE = 65536


@dataclass
class _Plain:
    """A process whose maps showed no recorder file."""

    start: int              # with the pid, which process
    vsize: int              # its virtual size then
    delay: float            # until the next read of unchanged maps
    due: float              # time.monotonic() of that read


def stat_identity(pid: int) -> tuple[int, int] | None:
    """(start time, virtual size) of process `pid` (/proc/PID/stat fields
    22 and 23), None if it is gone or unreadable."""
    try:
        # os.open: a third of open()'s cost, which is most of a scan's.
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        # After the command (in parentheses, any bytes): fields 3 onward.
        fields = data.rsplit(b")", 1)[1].split()
        return int(fields[19]), int(fields[20])
    except (OSError, IndexError, ValueError):
        return None


class MappedScan:
    """Rescans of the host for processes that map recorder probes."""

    def __init__(self, first_s: float = FIRST_S, limit_s: float = LIMIT_S,
                 size: int = SIZE) -> None:
        self.first_s = first_s
        self.limit_s = limit_s
        self.size = size
        self._plain: dict[int, _Plain] = {}
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
        alive: dict[int, _Plain] = {}
        verdicts: dict[tuple[int, int], bool] = {}     # per file, this scan
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            identity = stat_identity(pid)
            if identity is None or identity[1] == 0:
                continue        # gone, or no address space
            plain = self._plain.pop(pid, None)
            if (plain is not None and (plain.start, plain.vsize) == identity
                    and now < plain.due):
                alive[pid] = plain
                continue
            if not wanted(pid):
                continue
            if self._maps_recorder(pid, verdicts):
                found.append(pid)
                continue
            delay = (min(plain.delay * 2, self.limit_s)
                     if plain is not None and plain.start == identity[0]
                     else self.first_s)
            if len(alive) < self.size:      # the rest: read at the next scan
                alive[pid] = _Plain(*identity, delay, now + delay)
        self._plain = alive     # only the living
        return sorted(found)

    def forget(self, pid: int) -> None:
        """`pid` exec'd or exited: read its maps at the next scan."""
        self._plain.pop(pid, None)

    def _maps_recorder(self, pid: int, verdicts: dict[tuple[int, int], bool]) -> bool:
        self.maps_read += 1
        try:
            return notes.maps_recorder_probes(pid, verdicts)
        except (notes.ProcessGone, PermissionError):
            return False
