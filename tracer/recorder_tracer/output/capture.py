"""A compact binary capture of a batch trace: `recorder trace -w FILE`,
rendered later by `recorder show FILE` (as `perf record` / `perf script`).

The hot loop only copies the batch program's messages to the file as BPF
wrote them (chunks of up to 16 entries, their %s strings, the names of
topics BPF armed); nothing is decoded while the trace runs. What a reader
needs from the processes, which may be gone by then, is written beside
them the first time it is seen: the text at each format and location
address (TEXT), each process's comm and topic names (PROCESS).

File: the magic, then frames of (kind u32, length u32, payload):

    CHUNK, STRING, TOPIC   a batch message (kernel/bpf/batch.h), as is
    TEXT                   JSON {"pid": P, "texts": {address: text}}
    PROCESS                JSON {"pid": P, "comm": C, "topics": {id: name}}
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from typing import IO, Any

from recorder_tracer.abi import ENTRY
from recorder_tracer.decode.entry import RawEntry, entry_record
from recorder_tracer.decode.record import Record
from recorder_tracer.errors import TracerError
from recorder_tracer.kernel.batch_stream import (
    CHUNK_HEAD,
    ENTRY_SIZE,
    MSG_CHUNK,
    MSG_STRING,
    MSG_TOPIC,
    STRING_HEAD,
)

MAGIC = b"RECCAP01"
TEXT, PROCESS = 16, 17
_FRAME = struct.Struct("<II")
# format and where of each entry, for the texts a reader will need
_ADDRESSES = struct.Struct(f"<32xQQ{ENTRY_SIZE - 48}x")
_TOPIC_HEAD = struct.Struct("<IIIIQ")    # kind pid id size address, then name

TextReader = Callable[[int, int], "str | None"]     # (pid, address) -> text


def is_capture(path: str) -> bool:
    """Whether `path` starts with the capture magic."""
    try:
        with open(path, "rb") as file:
            return file.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


class CaptureWriter:
    """Writes the batch stream's messages to `path` (created 0600, never
    through a symlink), with the texts their addresses need."""

    def __init__(self, path: str, text: TextReader) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise TracerError(f"cannot write {path}: {error.strerror}") from None
        self.path = path
        self._file: IO[bytes] = os.fdopen(fd, "wb", buffering=1 << 20)
        self._file.write(MAGIC)
        self._text = text
        self._known: set[tuple[int, int]] = set()
        self.records = 0

    def message(self, cpu: int, kind: int, message: memoryview) -> None:
        """One batch message, in the order the stream gave it."""
        if kind == MSG_CHUNK:
            pid, _topic, count, skip = (CHUNK_HEAD.unpack_from(message, 0)[1:5])
            entries = message[CHUNK_HEAD.size:CHUNK_HEAD.size + count * ENTRY_SIZE]
            new: dict[str, str | None] = {}
            for addresses in _ADDRESSES.iter_unpack(entries):
                for address in addresses:
                    if (pid, address) not in self._known:
                        self._known.add((pid, address))
                        new[str(address)] = self._text(pid, address)
            if new:
                self._json(TEXT, {"pid": pid, "texts": new})
            self.records += count - skip
        self._frame(kind, message)

    def process(self, pid: int, comm: str, topics: dict[int, str]) -> None:
        """A process armed, or its topics known better."""
        self._json(PROCESS, {"pid": pid, "comm": comm,
                             "topics": {str(k): v for k, v in topics.items()}})

    def _json(self, kind: int, value: dict[str, Any]) -> None:
        self._frame(kind, json.dumps(value, separators=(",", ":")).encode())

    def _frame(self, kind: int, payload: bytes | memoryview) -> None:
        self._file.write(_FRAME.pack(kind, len(payload)))
        self._file.write(payload)

    def close(self) -> None:
        self._file.close()


def read_capture(path: str) -> Iterator[Record]:
    """The records of a capture, in timestamp order."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise TracerError(f"cannot read {path}: {error.strerror}") from None
    if not data.startswith(MAGIC):
        raise TracerError(f"{path}: not a recorder capture")
    texts: dict[int, dict[int, str | None]] = {}
    comms: dict[int, str] = {}
    topics: dict[int, dict[int, str]] = {}
    strings: dict[tuple[int, int, int, int, int], str | None] = {}
    chunks: list[tuple[int, memoryview]] = []
    view = memoryview(data)
    position = len(MAGIC)
    while position + _FRAME.size <= len(data):
        kind, length = _FRAME.unpack_from(data, position)
        payload = view[position + _FRAME.size:position + _FRAME.size + length]
        position += _FRAME.size + length
        if len(payload) < length:
            break                           # cut short: keep what is whole
        if kind == MSG_CHUNK:
            chunks.append((kind, payload))
        elif kind == MSG_STRING:
            _k, pid, topic, shard, index, arg, size = STRING_HEAD.unpack_from(payload)
            text = bytes(payload[STRING_HEAD.size:STRING_HEAD.size + max(0, size - 1)])
            strings[(pid, topic, shard, index, arg)] = (
                text.decode("utf-8", "replace") if size > 0 else None)
        elif kind == MSG_TOPIC:
            _k, pid, topic_id, _size, _address = _TOPIC_HEAD.unpack_from(payload)
            name = bytes(payload[_TOPIC_HEAD.size:]).split(b"\0", 1)[0]
            topics.setdefault(pid, {})[topic_id] = name.decode(errors="replace")
        elif kind == TEXT:
            value = json.loads(bytes(payload))
            texts.setdefault(value["pid"], {}).update(
                {int(k): v for k, v in value["texts"].items()})
        elif kind == PROCESS:
            value = json.loads(bytes(payload))
            comms[value["pid"]] = value["comm"]
            topics.setdefault(value["pid"], {}).update(
                {int(k): v for k, v in value["topics"].items()})
    records = [record for _, chunk in chunks
               for record in _chunk_records(chunk, texts, comms, topics, strings)]
    records.sort(key=lambda record: record.ts)
    return iter(records)


def _chunk_records(chunk: memoryview, texts: dict[int, dict[int, str | None]],
                   comms: dict[int, str], topics: dict[int, dict[int, str]],
                   strings: dict[tuple[int, int, int, int, int], str | None],
                   ) -> Iterator[Record]:
    _kind, pid, topic_id, count, skip, shard, _r, first, comm = CHUNK_HEAD.unpack_from(
        chunk)
    known = texts.get(pid, {})
    name = topics.get(pid, {}).get(topic_id, f"topic{topic_id}")
    comm_text = comms.get(pid) or comm.split(b"\0", 1)[0].decode(errors="replace")
    for i in range(skip, count):
        entry = RawEntry.unpack(chunk, CHUNK_HEAD.size + i * ENTRY.size, shard)
        index = first + i
        arg_of = iter(a for a in range(min(entry.nargs, 12))
                      if (entry.arg_types >> (2 * a)) & 3 == 2)

        def string(_address: int, index: int = index,
                   arg_of: Any = arg_of) -> str | None:
            arg = next(arg_of, None)
            if arg is None:
                return None
            return strings.get((pid, topic_id, shard, index, arg))

        yield entry_record(entry, pid=pid, comm=comm_text, topic=name,
                           text=known.get, string=string, cpu=shard)
