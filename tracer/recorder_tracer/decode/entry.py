"""The one entry decoder: a struct recorder_record becomes a Record.

Every reader ends here: the live stream and the kernel flight ring
(session/topics.py, with the strings BPF copied at the hit), crash and
on-demand snapshots (postmortem/snapshot.py) and shared-memory files
(target/shm.py). Each gives the entry (RawEntry, or bcc's ctypes copy: the
same field names), whose process it is, its topic's name and how to read
text at an address of that process; the format is rendered here
(decode/render.py) and the entry's flags kept (a span's begin or end).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from recorder_tracer.abi import ARG_DOUBLE, ARG_INT, ARG_STRING, ENTRY, MAX_ARGS
from recorder_tracer.decode.record import Arg, Record
from recorder_tracer.decode.render import format_message

_DOUBLE = struct.Struct("<d")
TextReader = Callable[[int], "str | None"]


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
        """Decode ENTRY_SIZE bytes of a struct recorder_record."""
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


def topic_name(topics: dict[int, str], topic_id: int) -> str:
    """A topic's name, or `topicN` when the registry did not name it."""
    return topics.get(topic_id, f"topic{topic_id}")


def decode_args(nargs: int, arg_types: int, values: Iterable[int],
                string: Callable[[int], str | None]) -> list[Arg]:
    """An entry's arguments as values: doubles un-cast, integers signed,
    strings read through `string(address)` (None where unreadable).

    >>> decode_args(2, 0b0001, [4607182418800017408, 2**64 - 1], lambda a: None)
    [1.0, -1]
    """
    args: list[Arg] = []
    for index, value in enumerate(list(values)[:min(nargs, MAX_ARGS)]):
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


def entry_record(entry: Any, *, pid: int, comm: str, topic: str,
                 text: TextReader, string: TextReader,
                 cpu: int | None = None, ns_pid: int | None = None) -> Record:
    """The Record of `entry`: its format and location read through
    `text(address)` (constants, cached), its %s arguments through
    `string(address)` (uncached: buffers are reused; the live stream first
    takes the copies BPF made). `cpu`: the CPU the record was read on, when
    not the entry's own."""
    args = decode_args(entry.nargs, entry.arg_types, entry.args, string)
    fmt = text(entry.format)
    message = (format_message(fmt, args) if fmt is not None
               else f"<unreadable format {entry.format:#x}>")
    return Record(ts=entry.timestamp, pid=pid, tid=entry.tid, comm=comm,
                  topic=topic, where=text(entry.where) or "?", message=message,
                  args=args, cpu=entry.cpu if cpu is None else cpu,
                  flags=entry.flags, ns_pid=ns_pid)


def image_record(entry: Any, image: Any, *, pid: int, comm: str,
                 topics: dict[int, str]) -> Record:
    """entry_record() for an entry read from rings (a snapshot, a share
    file): text from `image` (a target.memory.ProcessImage), topics named
    by the registry."""
    return entry_record(entry, pid=pid, comm=comm,
                        topic=topic_name(topics, entry.topic_id), text=image.string,
                        string=lambda address: image.string(address, cached=False))


# A batch stream's entries (kernel/batch_stream.py), as the decoder reads them.
class CapturedString:
    """A %s argument as BPF read it: `length` bytes with the NUL, or < 0."""

    __slots__ = ("length", "text")

    def __init__(self, length: int, text: bytes) -> None:
        self.length = length
        self.text = text


class BatchRecord:
    """One entry of a chunk, shaped like a harvest record for decoding."""

    __slots__ = ("comm", "entry", "pid", "strings")
    status = 0
    probe_address = 0
    harvest_ns = 0

    def __init__(self, pid: int, comm: bytes, entry: Any,
                 strings: list[CapturedString | None]) -> None:
        self.pid = pid
        self.comm = comm
        self.entry = entry
        self.strings = strings
