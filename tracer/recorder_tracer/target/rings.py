"""Read recorder rings from any byte source: the registry walk.

A ring is read the way BPF reads it at a fault (kernel/bpf/snapshot.c):
registry -> topics -> per-CPU shards -> the last min(N, written, capacity)
entries of each shard, each checked with the seqlock rule (the sequence
expected, before and after the copy). The source is a `read(address, size)`
callable: a live process's memory (ProcessImage.read) or a share file.

Entries of several shards are merged by time and the last N kept: a shard
keeps the last records of one CPU, and the process's last N records are
among the last N of each shard.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Callable, Iterable

from recorder_tracer.abi import (
    ENTRY_SIZE,
    MAX_SHARDS,
    SHARD_HEADER,
    SHARD_HEADER_SIZE,
    TOPIC_SHARDS_OFFSET,
)
from recorder_tracer.decode.entry import RawEntry
from recorder_tracer.target.memory import ProcessImage, Topic

Reader = Callable[[int, int], bytes | None]


def shard_window(read: Reader, shard: int, records: int,
                 slot: int = 0) -> list[RawEntry]:
    """The last min(`records`, written, capacity) entries of the shard at
    `shard`, oldest first, skipping any slot rewritten while read."""
    header = read(shard, SHARD_HEADER.size)
    if not header or len(header) < SHARD_HEADER.size:
        return []
    head, mask, _keep = SHARD_HEADER.unpack(header)
    count = min(head, mask + 1, records)
    if count <= 0:
        return []
    first = head - count
    start_slot = first & mask
    # The window may wrap: read it as one or two runs of slots.
    runs = [(start_slot, min(count, mask + 1 - start_slot))]
    if runs[0][1] < count:
        runs.append((0, count - runs[0][1]))

    def copy() -> bytes:
        parts = []
        for slot_index, length in runs:
            data = read(shard + SHARD_HEADER_SIZE + slot_index * ENTRY_SIZE,
                        length * ENTRY_SIZE) or b""
            parts.append(data.ljust(length * ENTRY_SIZE, b"\0"))
        return b"".join(parts)

    before = copy()
    after = copy()      # the seqlock's second look: a slot must not change
    entries = []
    for position in range(count):
        offset = position * ENTRY_SIZE
        expected = first + position + 1
        entry = RawEntry.unpack(before, offset, slot)
        again = struct.unpack_from("<Q", after, offset + 8)[0]
        if entry.sequence == expected and again == expected:
            entries.append(entry)
    return entries


def topic_shards(read: Reader, topic: Topic) -> list[tuple[int, int]]:
    """(slot, shard address) of each shard a topic has."""
    data = read(topic.address + TOPIC_SHARDS_OFFSET, MAX_SHARDS * 8)
    if not data or len(data) < MAX_SHARDS * 8:
        return []
    addresses = struct.unpack(f"<{MAX_SHARDS}Q", data)
    return [(slot, address) for slot, address in enumerate(addresses) if address]


def last_entries(windows: Iterable[list[RawEntry]], records: int) -> list[RawEntry]:
    """Merge shard windows by time (then shard, then sequence); keep the
    last `records`.

    >>> a = [RawEntry(t, t, 1, 0, 0, 0, 0, 0, 0, 0, ()) for t in (1, 4)]
    >>> b = [RawEntry(t, t, 1, 0, 0, 1, 0, 0, 0, 0, (), 1) for t in (2, 3)]
    >>> [entry.timestamp for entry in last_entries([a, b], 3)]
    [2, 3, 4]
    """
    merged = heapq.merge(*windows,
                         key=lambda e: (e.timestamp, e.shard, e.sequence))
    kept = list(merged)
    return kept[-records:] if records > 0 else []


def read_process_entries(image: ProcessImage, records: int) -> list[RawEntry]:
    """The last `records` entries of a live process, read through its
    memory, without stopping it (a slot being rewritten is skipped)."""
    windows = []
    for topic in image.topics():
        for slot, shard in topic_shards(image.read, topic):
            windows.append(shard_window(image.read, shard, records, slot))
    return last_entries(windows, records)
