"""Arm run-time topics: the ones Python (or any caller of
recorder_topic_create) makes while it runs.

They cannot each have a USDT note, so they share the probe
`recorder:recorder_dynamic`; its semaphore says "a tracer listens to some
run-time topic here", and each topic's `armed` word says whether that topic
is wanted. We attach the shared probe like any other and write the flags
through /proc/PID/mem: an aligned 8-byte store the process reads with a
relaxed load, so it never blocks or disturbs the target.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

from recorder_tracer.abi import TOPIC_ARMED_OFFSET
from recorder_tracer.target.memory import Topic

DYNAMIC_PROBE = "recorder_dynamic"


def runtime_topics(topics: Iterable[Topic], probe_names: set[str]) -> list[Topic]:
    """Topics of a registry that have no probe of their own."""
    return [topic for topic in topics
            if topic.name not in probe_names and topic.name != DYNAMIC_PROBE]


def open_memory(pid: int) -> int | None:
    """A descriptor on the memory of `pid` as it is now; None if gone.

    Writes go through it, never through a fresh open by PID: the descriptor
    stays bound to this address space, so once the process execs (or dies
    and its PID is reused) a write fails instead of landing in another
    program.
    """
    try:
        return os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None


def set_armed(memory: int, topic: Topic, armed: bool) -> bool:
    """Count one tracer in (`armed`) or out of `topic`'s armed word through
    `memory` (see open_memory); False if that address space is gone.

    The word counts tracers, it is not a flag: a short `recorder trace`
    ending must not disarm a daemon's topic (the core tests it for nonzero).
    Read, then written: two controllers arming the same topic in the same
    instant may count one; never below zero."""
    at = topic.address + TOPIC_ARMED_OFFSET
    try:
        current = os.pread(memory, 8, at)
        if len(current) != 8:
            return False
        count = struct.unpack("<Q", current)[0]
        if count > 1 << 16:     # not a count this code wrote: start again
            count = 0
        count = count + 1 if armed else max(count - 1, 0)
        written = os.pwrite(memory, struct.pack("<Q", count), at)
    except OSError:
        return False
    return written == 8


def read_armed(pid: int, topic: Topic) -> bool | None:
    """The flag as the process sees it; None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:
            memory.seek(topic.address + TOPIC_ARMED_OFFSET)
            return struct.unpack("<Q", memory.read(8))[0] != 0
    except (OSError, struct.error):
        return None
