"""The channel's wire format: typed, length-prefixed, sequence-numbered frames.

Every frame is a 16-byte header and a payload:

    magic   u16  0x5243 ("RC" little-endian)
    kind    u8   Kind below
    flags   u8   bit 0: the payload is zlib-compressed
    length  u32  payload bytes, at most MAX_PAYLOAD
    seq     u64  the item's sequence number (data frames), 0 for control

Data frames (records, console lines, metrics, snapshots) carry a sequence
number from 1 up, per stream (one daemon run): the collector writes each
once and names every gap. Control frames (hello, welcome, ack, clock
probes, stats) carry 0. A reader checks every length against its bound
before it allocates: a garbled or oversized frame is a FrameError, and the
connection ends with one line saying why.

Control payloads are small JSON objects (bounded by MAX_CONTROL); records
travel in the compact binary batches of channel/batch.py.
"""

from __future__ import annotations

import enum
import json
import struct
import zlib
from typing import Any, BinaryIO

PROTOCOL_VERSION = 1
MAGIC = 0x5243
HEADER = struct.Struct("<HBBIQ")
MAX_PAYLOAD = 16 << 20          # a compressed snapshot of 65536 records fits
MAX_CONTROL = 64 << 10          # hello, welcome, probes, stats
MAX_INFLATED = 64 << 20         # what a compressed payload may expand to
FLAG_ZLIB = 0x1
COMPRESS_OVER = 4096            # payloads larger than this are compressed


class Kind(enum.IntEnum):
    """What a frame carries; the direction is guest->host unless noted."""

    HELLO = 1           # who the guest is: JSON
    WELCOME = 2         # host->guest: where to resume: JSON
    ACK = 3             # host->guest: items up to seq are written: JSON
    PROBE = 4           # host->guest: a clock probe: JSON {id}
    PROBE_REPLY = 5     # the guest's CLOCK_MONOTONIC at the probe: JSON
    STATS = 6           # the guest's counters (dropped items): JSON
    RECORDS = 16        # a batch of records (batch.py)
    CONSOLE = 17        # a batch of console lines (batch.py)
    METRICS = 18        # Prometheus exposition text of the guest's daemon
    SNAPSHOT = 19       # a crash snapshot file: name and bytes (batch.py)


CONTROL = {Kind.HELLO, Kind.WELCOME, Kind.ACK, Kind.PROBE, Kind.PROBE_REPLY,
           Kind.STATS}
DATA = {Kind.RECORDS, Kind.CONSOLE, Kind.METRICS, Kind.SNAPSHOT}


class FrameError(ValueError):
    """A frame that breaks the format: the connection must end."""


class Closed(EOFError):
    """The peer closed the connection between frames."""


def frame(kind: Kind, payload: bytes, seq: int = 0, compress: bool = True) -> bytes:
    """One frame's bytes.

    >>> raw = frame(Kind.ACK, b'{"seq": 3}')
    >>> len(raw), raw[:2]
    (26, b'CR')
    """
    flags = 0
    if compress and len(payload) > COMPRESS_OVER:
        packed = zlib.compress(payload, 1)
        if len(packed) < len(payload):
            payload, flags = packed, FLAG_ZLIB
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"a {kind.name} payload of {len(payload)} bytes is over "
                         f"the limit ({MAX_PAYLOAD})")
    return HEADER.pack(MAGIC, kind, flags, len(payload), seq) + payload


def control(kind: Kind, value: dict[str, Any]) -> bytes:
    """A control frame holding `value` as JSON."""
    return frame(kind, json.dumps(value, separators=(",", ":")).encode(),
                 compress=False)


def read_exact(stream: BinaryIO, size: int) -> bytes:
    """`size` bytes from `stream`; Closed at a clean end, FrameError mid-way."""
    data = stream.read(size)
    if data is None:
        raise FrameError("non-blocking stream")
    if len(data) == size:
        return data
    if not data:
        raise Closed()
    parts = [data]
    got = len(data)
    while got < size:
        more = stream.read(size - got)
        if not more:
            raise FrameError(f"connection ended inside a frame ({got} of {size} "
                             "bytes)")
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def read_frame(stream: BinaryIO) -> tuple[Kind, int, bytes]:
    """The next frame: (kind, seq, payload), the payload inflated. Raises Closed at a
    clean end between frames, FrameError on anything malformed."""
    header = read_exact(stream, HEADER.size)
    magic, kind_number, flags, length, seq = HEADER.unpack(header)
    if magic != MAGIC:
        raise FrameError(f"bad magic 0x{magic:04x} (not a recorder channel, or "
                         "garbled)")
    try:
        kind = Kind(kind_number)
    except ValueError:
        raise FrameError(f"unknown frame kind {kind_number}") from None
    limit = MAX_CONTROL if kind in CONTROL else MAX_PAYLOAD
    if length > limit:
        raise FrameError(f"{kind.name} frame of {length} bytes is over the limit "
                         f"({limit})")
    if flags & ~FLAG_ZLIB:
        raise FrameError(f"unknown flags 0x{flags:02x}")
    if (kind in CONTROL) != (seq == 0):
        raise FrameError(f"{kind.name} frame with sequence number {seq}")
    payload = read_exact(stream, length) if length else b""
    if flags & FLAG_ZLIB:
        payload = inflate(payload)
    return kind, seq, payload


def inflate(payload: bytes) -> bytes:
    """Decompress, refusing to expand past MAX_INFLATED (a zip bomb)."""
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(payload, MAX_INFLATED)
    except zlib.error as error:
        raise FrameError(f"bad compressed payload: {error}") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise FrameError("compressed payload too large or truncated")
    return data


def parse_control(kind: Kind, payload: bytes) -> dict[str, Any]:
    """A control payload as a dict; FrameError if it is not a JSON object."""
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FrameError(f"{kind.name}: bad JSON ({error})") from None
    if not isinstance(value, dict):
        raise FrameError(f"{kind.name}: not a JSON object")
    return value


def field(value: dict[str, Any], name: str, kind: type, limit: int = 256) -> Any:
    """value[name], checked: of type `kind` (int or str), strings at most
    `limit` characters, ints non-negative and below 2^63.

    >>> field({"seq": 4}, "seq", int)
    4
    """
    item = value.get(name)
    if kind is int:
        if (not isinstance(item, int) or isinstance(item, bool)
                or not 0 <= item < 1 << 63):
            raise FrameError(f"field {name!r}: expected a count, got {item!r:.40}")
    elif kind is str and (not isinstance(item, str) or len(item) > limit):
        raise FrameError(f"field {name!r}: expected a string of at most "
                         f"{limit} characters")
    return item
