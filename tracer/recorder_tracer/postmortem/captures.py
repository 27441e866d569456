"""Captures in progress: the snapshot ring's messages put back together.

snapshot.c sends, per death, a FAULT message, the entries it copied, then
an END with the walk's counts. The END can be lost: the ring was full when
the walk ended (SNAPSHOT_COUNT_MESSAGES_LOST counts it), or the FAULT was
read by a controller that died before the END (pinned mode). A capture
waits for its END at most END_WAIT_S after its FAULT was read (the walk
runs in the dying thread before the signal takes effect: its END comes
within milliseconds, or never); then, or when a new FAULT of the same pid
comes first, it is handed back to be written as it is, marked incomplete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from recorder_tracer.abi import (
    SNAPSHOT_END,
    SNAPSHOT_ENTRY,
    SNAPSHOT_ENTRY_TORN,
    SNAPSHOT_ENTRY_UNREADABLE,
    SNAPSHOT_FAULT,
)
from recorder_tracer.decode.entry import RawEntry

END_WAIT_S = 5.0
ENTRY_STATUS_NAMES = {SNAPSHOT_ENTRY_UNREADABLE: "unreadable",
                      SNAPSHOT_ENTRY_TORN: "torn"}
# What the walk's counts are when its END never came.
END_LOST = {"end_lost": True, "topics": None, "shards": None, "lost": None,
            "copy_ns": None}


@dataclass
class Capture:
    """One capture in progress: the FAULT message, then entries."""

    pid: int
    tid: int
    signal: int
    code: int
    flags: int
    address: int
    time_ns: int
    comm: str
    entries: list[RawEntry] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    read_at: float = field(default_factory=time.monotonic)  # its FAULT


Done = tuple[Capture, dict[str, Any]]      # a capture and its walk's counts


class Captures:
    """The captures whose END has not come yet, by pid."""

    def __init__(self) -> None:
        self.pending: dict[int, Capture] = {}

    def __contains__(self, pid: int) -> bool:
        return pid in self.pending

    def take(self, kind: int, values: tuple[Any, ...]) -> list[Done]:
        """One message (its kind and fields, unpacked); the captures it
        completes (an END), or ends unfinished (a FAULT of a pid whose
        previous capture never got its END)."""
        if kind == SNAPSHOT_ENTRY:
            capture = self.pending.get(values[1])
            if capture is None:
                return []
            status = values[3]
            if status:
                name = ENTRY_STATUS_NAMES.get(status, "bad")
                capture.skipped[name] = capture.skipped.get(name, 0) + 1
            else:
                capture.entries.append(RawEntry(*values[5:15], tuple(values[15:27]),
                                                values[2]))
            return []
        if kind == SNAPSHOT_FAULT:
            (_, tgid, tid, sig, code, flags, address, time_ns, _registry,
             comm) = values
            earlier = self.pending.pop(tgid, None)
            self.pending[tgid] = Capture(tgid, tid, sig, code, flags, address,
                                         time_ns, _text(comm))
            return [] if earlier is None else [_unfinished(earlier)]
        if kind == SNAPSHOT_END:
            _, tgid, topics, shards, sent, lost, end_ns = values
            capture = self.pending.pop(tgid, None)
            if capture is None:
                return []
            return [(capture, {"topics": topics, "shards": shards, "copied": sent,
                               "lost": lost, "copy_ns": end_ns - capture.time_ns})]
        return []

    def expired(self, now: float | None = None) -> list[Done]:
        """The captures that waited END_WAIT_S for their END, removed
        (with `now` float("inf"): every capture still pending)."""
        now = time.monotonic() if now is None else now
        late = [pid for pid, capture in self.pending.items()
                if now - capture.read_at >= END_WAIT_S]
        return [_unfinished(self.pending.pop(pid)) for pid in late]


def _unfinished(capture: Capture) -> Done:
    return capture, {**END_LOST, "copied": len(capture.entries)}


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
