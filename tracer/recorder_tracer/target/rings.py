"""Read recorder rings from any byte source, and turn entries into Records.

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
from dataclasses import dataclass

from recorder_tracer.decode.record import Arg, Record
from recorder_tracer.decode.render import format_message
from recorder_tracer.target.memory import ProcessImage, Topic

# struct recorder_entry (probes/include/recorder/entry.h); tests check it.
ENTRY = struct.Struct("<QQIIIHBBQQ12Q")
ENTRY_SIZE = 144
SHARD_HEADER = struct.Struct("<QII")        # head, mask, keep
SHARD_HEADER_SIZE = 64
MAX_SHARDS = 64
TOPIC_SHARDS_OFFSET = 48                    # offsetof(recorder_topic, shards)
ARG_INT, ARG_DOUBLE, ARG_STRING, ARG_POINTER = range(4)
_DOUBLE = struct.Struct("<d")

Reader = Callable[[int, int], bytes | None]


@dataclass(frozen=True, slots=True)
class RawEntry:
    """One entry as it lies in a ring, plus where it was found."""

    timestamp: int
    sequence: int
    tid: int
    topic_id: int
    arg_types: int
    cpu: int
    nargs: int
    flags: int
    format: int
    where: int
    args: tuple[int, ...]
    shard: int = 0          # the shard's CPU slot

    @classmethod
    def unpack(cls, data: bytes, offset: int = 0, shard: int = 0) -> RawEntry:
        """Decode ENTRY_SIZE bytes of a struct recorder_entry."""
        values = ENTRY.unpack_from(data, offset)
        return cls(*values[:10], tuple(values[10:]), shard)

    def as_json(self) -> dict[str, object]:
        """The raw fields, addresses in hex."""
        return {"timestamp": self.timestamp, "sequence": self.sequence,
                "tid": self.tid, "topic_id": self.topic_id,
                "arg_types": self.arg_types, "cpu": self.cpu, "nargs": self.nargs,
                "flags": self.flags, "format": hex(self.format),
                "where": hex(self.where), "args": list(self.args[:self.nargs]),
                "shard": self.shard}

    @classmethod
    def from_json(cls, value: dict[str, object]) -> RawEntry:
        """The inverse of as_json (missing arguments are zeros)."""
        args = [int(arg) for arg in value["args"]]     # type: ignore[attr-defined]
        return cls(int(value["timestamp"]), int(value["sequence"]),  # type: ignore[arg-type]
                   int(value["tid"]), int(value["topic_id"]),        # type: ignore[arg-type]
                   int(value["arg_types"]), int(value["cpu"]),       # type: ignore[arg-type]
                   int(value["nargs"]), int(value["flags"]),         # type: ignore[arg-type]
                   int(str(value["format"]), 16), int(str(value["where"]), 16),
                   tuple(args + [0] * (12 - len(args))), int(value["shard"]))  # type: ignore[arg-type]


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


def decode_args(nargs: int, arg_types: int, values: Iterable[int],
                string: Callable[[int], str | None]) -> list[Arg]:
    """An entry's arguments as values: doubles un-cast, integers signed,
    strings read through `string(address)` (None where unreadable).

    >>> decode_args(2, 0b0001, [4607182418800017408, 2**64 - 1], lambda a: None)
    [1.0, -1]
    """
    args: list[Arg] = []
    for index, value in enumerate(list(values)[:min(nargs, 12)]):
        kind = (arg_types >> (2 * index)) & 3
        if kind == ARG_DOUBLE:
            args.append(_DOUBLE.unpack(value.to_bytes(8, "little"))[0])
        elif kind == ARG_STRING:
            args.append(string(value))
        elif kind == ARG_INT and value >= 1 << 63:
            args.append(value - (1 << 64))
        else:
            args.append(value)
    return args


def entry_record(entry: RawEntry, image: ProcessImage, pid: int, comm: str,
                 topics: dict[int, str]) -> Record:
    """A Record of `entry`, its format, location and strings read from the
    process (or its files once it has gone)."""
    args = decode_args(entry.nargs, entry.arg_types, entry.args, image.string)
    fmt = image.string(entry.format)
    message = (format_message(fmt, args) if fmt is not None
               else f"<unreadable format {entry.format:#x}>")
    return Record(ts=entry.timestamp, pid=pid, tid=entry.tid, comm=comm,
                  topic=topics.get(entry.topic_id, f"topic{entry.topic_id}"),
                  where=image.string(entry.where) or "?", message=message,
                  args=args, cpu=entry.cpu)
