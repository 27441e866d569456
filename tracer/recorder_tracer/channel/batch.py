"""Compact binary payloads of the channel's data frames.

A RECORDS payload is one batch, in columns, so that Python packs and
unpacks each column with one call (array) rather than a few per record:

    HEAD      count u32, names u16, values u32, tags u32, text u32
    names     `names` times (len u16, utf-8): the batch's provider, comm,
              topic and source-location names
    columns   `count` of each, little-endian: ts u64, pid u32, tid u32,
              cpu u16, provider u16, comm u16, topic u16, where u16 (name
              indexes), nargs u8
    tags      one byte per argument, in record order: q int64, Q uint64,
              d double, s string, n unreadable (None)
    values    `values` 8-byte numbers: the q, Q and d arguments in order
    text      utf-8, NUL-separated: each record's message, then its string
              arguments (a NUL inside one becomes U+FFFD: C strings hold none)

Each batch is self-contained (its own table), so a frame resent after a
reconnect decodes alone. Names repeat within a batch, messages rarely:
messages are inline. A CONSOLE payload is count u32 and per line (ts u64,
source len u8 + bytes, text len u16 + bytes); METRICS is ts u64 and the
exposition text; SNAPSHOT is ts u64, name len u16 + name, file bytes.

Every decoder bounds what it reads by the payload's length and raises
FrameError on anything that does not fit.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import NamedTuple

from recorder_tracer.channel.wire import FrameError
from recorder_tracer.decode.record import Arg, Record

HEAD = struct.Struct("<IHIII")
# The columns after the name table: (array typecode, what it holds).
COLUMNS = (("Q", "ts"), ("I", "pid"), ("I", "tid"), ("H", "cpu"),
           ("H", "provider"), ("H", "comm"), ("H", "topic"), ("H", "where"),
           ("B", "nargs"))
ROW_BYTES = sum(array(code).itemsize for code, _ in COLUMNS)
MASKS = {"Q": (1 << 64) - 1, "I": 0xFFFFFFFF, "H": 0xFFFF, "B": 0xFF}
SWAP = sys.byteorder != "little"
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
I64 = struct.Struct("<q")
F64 = struct.Struct("<d")
LINE = struct.Struct("<QB")
MAX_BATCH = 65536           # records or lines in one frame
MAX_TEXT = 65535            # bytes of a message, a console line, a name
MAX_ARG_TEXT = 4096         # bytes of a string argument
INT_TAGS = [b"q" * n for n in range(256)]

assert ROW_BYTES == 27 and all(array(code).itemsize == size for code, size in
                               (("Q", 8), ("I", 4), ("H", 2), ("B", 1)))


class Decoded(NamedTuple):
    """A record as the collector receives it (Record without formatting)."""

    ts: int
    pid: int
    tid: int
    cpu: int
    provider: str
    comm: str
    topic: str
    where: str
    message: str
    args: list[Arg]


def _clip(text: str, limit: int) -> bytes:
    data = text.encode("utf-8", "replace")
    if len(data) > limit:
        data = data[:limit].decode("utf-8", "ignore").encode()
    return data


def _column(code: str, values: list[int]) -> bytes:
    """One column's little-endian bytes (values out of range wrap)."""
    try:
        column = array(code, values)
    except OverflowError:
        mask = MASKS[code]
        column = array(code, [value & mask for value in values])
    if SWAP:
        column.byteswap()
    return column.tobytes()


def encode_records(records: list[Record]) -> bytes:
    """One RECORDS payload holding `records` (at most MAX_BATCH).

    >>> r = Record(ts=5, pid=1, tid=1, comm="a", topic="t", where="w.c:1",
    ...            message="m 1", args=[1, -2.5, "x", None, 1 << 63], cpu=0)
    >>> decode_records(encode_records([r]))[0].args
    [1, -2.5, 'x', None, 9223372036854775808]
    """
    if len(records) > MAX_BATCH:
        raise ValueError(f"a batch holds at most {MAX_BATCH} records")
    table: dict[str, int] = {}
    names = []
    for field in ("provider", "comm", "topic", "where"):
        column = [getattr(record, field) for record in records]
        for name in dict.fromkeys(column):
            table.setdefault(name, len(table))
        names.append(list(map(table.__getitem__, column)))
    if len(table) > 0xFFFF:
        raise ValueError("too many distinct names in one batch")
    arguments = [record.args for record in records]
    nargs = list(map(len, arguments))
    values = list(chain.from_iterable(arguments))
    numbers = None
    if max(nargs, default=0) < 256 and all(type(value) is int for value in values):
        try:
            numbers = struct.pack(f"<{len(values)}q", *values)
            tags = INT_TAGS[1] * len(values)
            texts = [record.message for record in records]
        except struct.error:        # an int past int64
            numbers = None
    if numbers is None:
        nargs = [min(count, 255) for count in nargs]
        parts: list[bytes] = []
        values, texts = [], []
        for record in records:
            texts.append(record.message)
            _encode_args(record.args[:255], parts, values, texts)
        tags = b"".join(parts)
        numbers = struct.pack(f"<{len(values)}q", *values)
    columns = [_column("Q", [record.ts for record in records]),
               _column("I", [record.pid for record in records]),
               _column("I", [record.tid for record in records]),
               _column("H", [record.cpu for record in records]),
               *(_column("H", column) for column in names),
               _column("B", nargs)]
    table_bytes = []
    for text in table:
        data = _clip(text, MAX_TEXT)
        table_bytes.append(U16.pack(len(data)) + data)
    joined = "\0".join(texts)
    if joined.count("\0") != len(texts) - 1:
        joined = "\0".join(part.replace("\0", "\ufffd") for part in texts)
    blob = joined.encode("utf-8", "replace")
    return b"".join([HEAD.pack(len(records), len(table), len(values), len(tags),
                               len(blob)),
                     *table_bytes, *columns, tags, numbers, blob])


def _encode_args(args: list[Arg], tags: list[bytes], values: list[int],
                 texts: list[str]) -> None:
    for arg in args:
        if isinstance(arg, bool):
            arg = int(arg)
        if isinstance(arg, int) and -(1 << 63) <= arg < 1 << 63:
            tags.append(b"q")
            values.append(arg)
        elif isinstance(arg, int) and 0 <= arg < 1 << 64:
            tags.append(b"Q")
            values.append(arg - (1 << 64))
        elif isinstance(arg, float):
            tags.append(b"d")
            values.append(I64.unpack(F64.pack(arg))[0])
        elif arg is None:
            tags.append(b"n")
        else:
            tags.append(b"s")
            texts.append(str(arg)[:MAX_ARG_TEXT])


def _text(payload: bytes, offset: int, size: int) -> str:
    end = offset + size
    if end > len(payload):
        raise FrameError("a string runs past the end of its frame")
    return payload[offset:end].decode("utf-8", "replace")


def decode_records(payload: bytes) -> list[Decoded]:
    """The records of a RECORDS payload; FrameError if malformed."""
    return [Decoded(*row) for row in iter_records(payload)]


class Sections(NamedTuple):
    """A RECORDS payload cut into its checked columns."""

    table: list[str]
    ts: list[int]
    pid: list[int]
    tid: list[int]
    cpu: list[int]
    provider: list[int]
    comm: list[int]
    topic: list[int]
    where: list[int]
    nargs: list[int]
    tags: bytes
    values: tuple[int, ...]
    texts: list[str]


def sections(payload: bytes) -> Sections:
    """Cut a RECORDS payload into columns, checking every count and length
    and every name index (FrameError if any does not fit)."""
    try:
        count, strings, nvalues, ntags, ntext = HEAD.unpack_from(payload, 0)
        if count > MAX_BATCH or ntags > 255 * count or nvalues > ntags:
            raise FrameError(f"a batch of {count} records, {ntags} arguments is "
                             "over the limits")
        offset = HEAD.size
        table = []
        for _ in range(strings):
            (size,) = U16.unpack_from(payload, offset)
            table.append(_text(payload, offset + 2, size))
            offset += 2 + size
        end_tags = offset + count * ROW_BYTES + ntags
        end_values = end_tags + 8 * nvalues
        if end_values + ntext != len(payload):
            raise FrameError("a record batch's sections do not add up to its "
                             "length")
        view = memoryview(payload)
        columns = []
        for code, _ in COLUMNS:
            column = array(code)
            column.frombytes(view[offset:offset + count * column.itemsize])
            if SWAP:
                column.byteswap()
            offset += count * column.itemsize
            columns.append(column.tolist())
        tags = payload[offset:end_tags]
        values = struct.unpack_from(f"<{nvalues}q", payload, end_tags)
        texts = payload[end_values:].decode("utf-8", "replace").split("\0")
    except struct.error:
        raise FrameError("a record batch is truncated") from None
    if len(texts) < count:
        raise FrameError("a record batch has fewer messages than records")
    if count and max(max(column) for column in columns[4:8]) >= len(table):
        raise FrameError("a record refers past its batch's name table")
    return Sections(table, *columns, tags, values, texts)


def check_end(cut: Sections, tag: int, value: int, text: int) -> None:
    """After a walk over every record: each column used exactly (the
    argument counts agree with the tags, values and texts)."""
    if (tag, value, text) != (len(cut.tags), len(cut.values), len(cut.texts)):
        raise FrameError("a record batch's arguments do not add up")


def slow_args(cut: Sections, tag: int, nargs: int, value: int, text: int
              ) -> tuple[list[Arg], int, int]:
    """The arguments of one record, whatever their kinds: (args, the next
    value index, the next text index)."""
    args: list[Arg] = []
    for kind in cut.tags[tag:tag + nargs]:
        if kind == 0x71:        # q
            args.append(cut.values[value])
            value += 1
        elif kind == 0x64:      # d
            args.append(F64.unpack(I64.pack(cut.values[value]))[0])
            value += 1
        elif kind == 0x51:      # Q
            args.append(cut.values[value] & 0xFFFFFFFFFFFFFFFF)
            value += 1
        elif kind == 0x73:      # s
            args.append(cut.texts[text])
            text += 1
        elif kind == 0x6E:      # n
            args.append(None)
        else:
            raise FrameError(f"unknown argument tag {kind}")
    return args, value, text


def iter_records(payload: bytes) -> list[tuple]:
    """The records of a RECORDS payload as plain tuples in Decoded's order;
    checked whole before any is returned."""
    cut = sections(payload)
    table, texts = cut.table, cut.texts
    out = []
    tag = value = text = 0
    try:
        for ts, pid, tid, cpu, provider, comm, topic, where, nargs in zip(
                cut.ts, cut.pid, cut.tid, cut.cpu, cut.provider, cut.comm,
                cut.topic, cut.where, cut.nargs, strict=True):
            message = texts[text]
            args, value, text = slow_args(cut, tag, nargs, value, text + 1)
            tag += nargs
            out.append((ts, pid, tid, cpu, table[provider], table[comm],
                        table[topic], table[where], message, args))
    except IndexError:
        raise FrameError("a record batch's texts do not add up") from None
    check_end(cut, tag, value, text)
    return out


class ConsoleLine(NamedTuple):
    """One line of a console source, stamped with the guest's clock."""

    ts: int
    source: str
    text: str


def encode_console(lines: Iterable[ConsoleLine]) -> bytes:
    """One CONSOLE payload.

    >>> list(decode_console(encode_console([ConsoleLine(3, "kmsg", "hi")])))
    [ConsoleLine(ts=3, source='kmsg', text='hi')]
    """
    parts = []
    count = 0
    for line in lines:
        source = _clip(line.source, 255)
        text = _clip(line.text, MAX_TEXT)
        parts.append(LINE.pack(line.ts, len(source)) + source
                     + U16.pack(len(text)) + text)
        count += 1
    if count > MAX_BATCH:
        raise ValueError(f"a batch holds at most {MAX_BATCH} lines")
    return U32.pack(count) + b"".join(parts)


def decode_console(payload: bytes) -> Iterator[ConsoleLine]:
    """The lines of a CONSOLE payload (checked whole before any is given)."""
    lines = []
    try:
        (count,) = U32.unpack_from(payload, 0)
        if count > MAX_BATCH:
            raise FrameError(f"a batch of {count} lines is over the limit")
        offset = 4
        for _ in range(count):
            ts, size = LINE.unpack_from(payload, offset)
            source = _text(payload, offset + LINE.size, size)
            offset += LINE.size + size
            (size,) = U16.unpack_from(payload, offset)
            lines.append(ConsoleLine(ts, source, _text(payload, offset + 2, size)))
            offset += 2 + size
    except struct.error:
        raise FrameError("a console batch is truncated") from None
    if offset != len(payload):
        raise FrameError("stray bytes after a console batch")
    return iter(lines)


def encode_metrics(ts: int, exposition: bytes) -> bytes:
    """A METRICS payload: when, and the Prometheus exposition text."""
    return U64.pack(ts) + exposition


def decode_metrics(payload: bytes) -> tuple[int, str]:
    if len(payload) < 8:
        raise FrameError("a metrics frame is truncated")
    return U64.unpack_from(payload)[0], payload[8:].decode("utf-8", "replace")


def encode_snapshot(ts: int, name: str, content: bytes) -> bytes:
    """A SNAPSHOT payload: when it was sent, the file's name and bytes."""
    data = _clip(name, 255)
    return U64.pack(ts) + U16.pack(len(data)) + data + content


def decode_snapshot(payload: bytes) -> tuple[int, str, bytes]:
    try:
        (ts,) = U64.unpack_from(payload)
        (size,) = U16.unpack_from(payload, 8)
    except struct.error:
        raise FrameError("a snapshot frame is truncated") from None
    return ts, _text(payload, 10, size), payload[10 + size:]
