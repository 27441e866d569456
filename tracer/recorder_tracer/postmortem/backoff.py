"""When to look again for the registry of a process that showed none.

The snapshot watcher rescans every few seconds for processes that map a
file with recorder probes, to find cores loaded after exec (dlopen, a
Python import). A process may map such a file and never have a registry:
any user can map a recorder library without running it, and every look
reads up to 16 MiB of its memory. Such a process is looked at again after
2 s, then 4, 8 ... up to 5 minutes: a core that shows up late is still
found, and a process that never has one costs a read every few minutes.

Misses are kept per pid with the process's start time: a pid reused by
another process is looked at at once. An exec or an exit forgets the
pid (the watcher's forget). At most 4096 are kept, the oldest dropped
(a dropped one is only looked at sooner).
"""

from __future__ import annotations

from dataclasses import dataclass

from recorder_tracer.target import procs

FIRST_S = 2.0
LIMIT_S = 300.0
SIZE = 4096


@dataclass
class _Miss:
    start: int | None       # the process's start time: with the pid, who
    delay: float            # seconds until the next look, doubled each miss
    due: float              # time.monotonic() of the next look


class RegistryMisses:
    """The processes found without a registry, and when each is due."""

    def __init__(self, first_s: float = FIRST_S, limit_s: float = LIMIT_S,
                 size: int = SIZE) -> None:
        self.first_s = first_s
        self.limit_s = limit_s
        self.size = size
        self._misses: dict[int, _Miss] = {}

    def __len__(self) -> int:
        return len(self._misses)

    def due(self, pid: int, now: float) -> bool:
        """Whether `pid` should be looked at now."""
        miss = self._misses.get(pid)
        if miss is None:
            return True
        if miss.start != procs.start_time(pid):     # another process by now
            del self._misses[pid]
            return True
        return now >= miss.due

    def missed(self, pid: int, now: float) -> None:
        """`pid` was looked at, at `now`, and has no registry."""
        start = procs.start_time(pid)
        miss = self._misses.pop(pid, None)
        delay = (self.first_s if miss is None or miss.start != start
                 else min(miss.delay * 2, self.limit_s))
        self._misses[pid] = _Miss(start, delay, now + delay)
        while len(self._misses) > self.size:
            del self._misses[next(iter(self._misses))]

    def next_look(self, pid: int) -> float | None:
        """When `pid` is due (None: at once)."""
        miss = self._misses.get(pid)
        return None if miss is None else miss.due

    def forget(self, pid: int) -> None:
        """`pid` exec'd, exited or was registered."""
        self._misses.pop(pid, None)
