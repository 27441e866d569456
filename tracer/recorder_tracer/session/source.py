"""What the session loop reads records from: a `Source`.

Two kinds exist: recorder topics (session/topics.py, the harvest program)
and other programs' USDT probes (session/usdt.py, the USDT program). The
loop (session/loop.py) arms and disarms each process in every source,
polls their streams together and sends what they decode through one
reorder buffer; the process tracker (session/tracker.py) tells it which
processes start, exec and end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from recorder_tracer.decode.record import Record
    from recorder_tracer.kernel.stream import Stream


class Source(Protocol):
    """One kind of probe the session traces."""

    streams: list[Stream]   # what the loop polls and drains; may be empty

    def arm(self, pid: int, required: bool = True, started: bool = False) -> Any:
        """Attach this source's probes in `pid`; None when it has none
        (a TracerError when `required`). `started`: the -c command, stopped
        at its exec."""

    def disarm(self, pid: int) -> None:
        """Detach `pid`'s probes; its records can still be decoded."""

    def decode(self, cpu: int, raw: Any) -> Record:
        """The Record of one raw event of this source's stream."""

    def traced_pids(self) -> set[int]:
        """The processes armed (or about to be) now."""

    def comm_of(self, pid: int) -> str | None:
        """A traced process's comm; None if not traced here."""

    def topic_names(self) -> set[str]:
        """The names records can carry now."""

    def on_exec(self, pid: int, started: bool, exec_ns: int) -> None:
        """A traced process exec'd (`started`: it is the -c command) at
        `exec_ns` (CLOCK_MONOTONIC, the clock of entries)."""

    def rescan(self) -> None:
        """Arm what appeared in traced processes since (libraries, topics)."""

    def end(self, pid: int) -> None:
        """`pid` exited and its records are delivered: forget it."""

    def release(self) -> None:
        """Free the kernel objects (after the last drain)."""
