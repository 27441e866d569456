"""When to look again at a process that showed nothing of interest.

The snapshot watcher rescans the host every few seconds, for cores loaded
after exec (dlopen, a Python import). Two looks there are worth skipping
for a process that keeps showing nothing: reading its maps (rescan.py's
MappedScan: it mapped no recorder file), and reading its memory for a
registry (RegistryMisses below: it maps a recorder file but has no
registry, which any user can arrange, and each look reads up to 16 MiB).

`Backoff` keeps, per pid, the identity the process had (read from
/proc/PID/stat: its start time first, so that a reused pid is another
process), a delay, and when the next look is due: 2 s, then 4, 8 ... up
to 5 minutes while the same process shows nothing. A changed identity is
due at once; the delay keeps doubling while its leading `same` fields (the
process) are unchanged. An exec or an exit forgets the pid; at most `size`
are kept, the oldest dropped (a dropped one is only looked at sooner).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from recorder_tracer.target import procs

FIRST_S = 2.0
LIMIT_S = 300.0
SIZE = 4096

Identity = tuple[int, ...]


@dataclass
class _Entry:
    identity: Identity      # with the pid, which process (and its state)
    delay: float            # seconds until the next look, doubled each miss
    due: float              # time.monotonic() of the next look


class Backoff:
    """Per pid: when to look again at a process that showed nothing."""

    def __init__(self, first_s: float = FIRST_S, limit_s: float = LIMIT_S,
                 size: int = SIZE, same: int = 1) -> None:
        self.first_s = first_s
        self.limit_s = limit_s
        self.size = size
        self.same = same        # leading identity fields naming the process
        self._entries: dict[int, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, pid: int) -> bool:
        return pid in self._entries

    def due(self, pid: int, identity: Identity, now: float) -> bool:
        """Whether `pid`, seen now as `identity`, should be looked at."""
        entry = self._entries.get(pid)
        return entry is None or entry.identity != identity or now >= entry.due

    def missed(self, pid: int, identity: Identity, now: float) -> None:
        """`pid` was looked at, at `now`, as `identity`, and showed nothing."""
        entry = self._entries.pop(pid, None)
        delay = (min(entry.delay * 2, self.limit_s)
                 if entry is not None
                 and entry.identity[:self.same] == identity[:self.same]
                 else self.first_s)
        self._entries[pid] = _Entry(identity, delay, now + delay)
        while len(self._entries) > self.size:
            del self._entries[next(iter(self._entries))]

    def next_look(self, pid: int) -> float | None:
        """When `pid` is due (None: at once)."""
        entry = self._entries.get(pid)
        return None if entry is None else entry.due

    def forget(self, pid: int) -> None:
        """`pid` exec'd, exited or showed something."""
        self._entries.pop(pid, None)

    def keep_only(self, pids: Iterable[int]) -> None:
        """Forget every pid but `pids` (the living)."""
        living = set(pids)
        self._entries = {pid: entry for pid, entry in self._entries.items()
                         if pid in living}


class RegistryMisses(Backoff):
    """The processes found mapping a core without a registry, by pid and
    start time."""

    def due(self, pid: int, now: float) -> bool:     # type: ignore[override]
        """Whether `pid` should be looked at now."""
        return pid not in self or super().due(pid, _identity(pid), now)

    def missed(self, pid: int, now: float) -> None:  # type: ignore[override]
        """`pid` was looked at, at `now`, and has no registry."""
        super().missed(pid, _identity(pid), now)


def _identity(pid: int) -> Identity:
    start = procs.start_time(pid)
    return (start if start is not None else -1,)
