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

from recorder_tracer.target.memory import TOPIC_ARMED_OFFSET, Topic

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
    """Set `topic`'s armed flag through `memory` (see open_memory); False
    if that address space is gone."""
    try:
        written = os.pwrite(memory, struct.pack("<Q", 1 if armed else 0),
                            topic.address + TOPIC_ARMED_OFFSET)
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
