"""Read RECORDER_SHARE files: a process's rings kept in a file it maps.

The format is probes/include/recorder/share.h (described in
probes/PROBES.md): page-aligned blocks, a header, topics, shards (a shard
header and its entries, live while the process runs) and the text of its
/proc/PID/maps. The shards are read with the seqlock rule (target/rings.py),
so a file can be read while its process runs, and after it died, even by
SIGKILL. Addresses in entries are resolved against the latest maps block
and the files it names. A file whose process is gone, or that no process
maps any more, is stale: `recorder dump --shm --remove-stale` removes it.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recorder_tracer.abi import (
    SHARE_BLOCK_MAGIC,
    SHARE_HEADER,
    SHARE_MAGIC,
    SHARE_MAPS,
    SHARE_SHARD,
    SHARE_TOPIC,
)
from recorder_tracer.decode.entry import image_record
from recorder_tracer.decode.record import Record
from recorder_tracer.errors import TracerError
from recorder_tracer.target.memory import ProcessImage, parse_maps, read_maps
from recorder_tracer.target.rings import last_entries, shard_window
from recorder_tracer.target.safe_open import open_untrusted

BLOCK_MAGIC = SHARE_BLOCK_MAGIC
BLOCK = struct.Struct("<IIQQ")              # magic, kind, bytes, payload_bytes
BLOCK_HEADER_SIZE = 64
FILE_HEADER = struct.Struct("<QIIIIQQ16s256s")
TOPIC = struct.Struct("<IIQ128s256s")
SHARD_FIELDS = struct.Struct("<QIIII")      # head, mask, keep, topic_id, cpu
KIND_HEADER, KIND_TOPIC, KIND_SHARD, KIND_MAPS = (SHARE_HEADER, SHARE_TOPIC,
                                                  SHARE_SHARD, SHARE_MAPS)
SUFFIX = ".recorder"


# A share file is written by the process it belongs to, anyone's: bounds
# on what reading one may cost (a real file is far inside them).
MAX_SHARE_BYTES = 1 << 30
MAX_BLOCKS = 1 << 16
MAX_SHARDS = 4096
MAX_MAPS_BYTES = 4 << 20


@dataclass
class ShareFile:
    """The parts of a share file: where each block is, not the entries."""

    path: str
    pid: int
    comm: str
    exe: str
    created_ns: int
    topics: dict[int, str] = field(default_factory=dict)
    shards: list[tuple[int, int]] = field(default_factory=list)  # (offset, cpu)
    maps_text: str = ""
    identity: tuple[int, int] = (0, 0)     # (device, inode) of what was read


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _open(path: str | Path) -> int:
    """A descriptor of the share file at `path`: a regular file (no FIFO,
    device or symlink) of bounded size, or TracerError."""
    try:
        return open_untrusted(path, MAX_SHARE_BYTES)
    except OSError as error:
        raise TracerError(f"{path}: {error.strerror or error}") from None


def open_share(path: str | Path) -> ShareFile:
    """Parse the blocks of the share file at `path`; TracerError if it is
    not one. Reads block headers, topics and maps, never the rings."""
    descriptor = _open(path)
    try:
        info = os.fstat(descriptor)
        return _parse(descriptor, info.st_size, str(path),
                      (info.st_dev, info.st_ino))
    finally:
        os.close(descriptor)


def _parse(descriptor: int, size: int, path: str,
           identity: tuple[int, int]) -> ShareFile:
    def read(offset: int, length: int) -> bytes:
        return os.pread(descriptor, length, offset)

    first = read(0, BLOCK_HEADER_SIZE + FILE_HEADER.size)
    if (len(first) < BLOCK_HEADER_SIZE + FILE_HEADER.size
            or BLOCK.unpack_from(first)[:2] != (BLOCK_MAGIC, KIND_HEADER)):
        raise TracerError(f"{path}: not a recorder share file")
    magic, _version, entry_size, pid, _page, created, _registry, comm, exe = (
        FILE_HEADER.unpack_from(first, BLOCK_HEADER_SIZE))
    if magic != SHARE_MAGIC or entry_size != 144:
        raise TracerError(f"{path}: not a recorder share file (bad header)")
    share = ShareFile(path, pid, _text(comm), _text(exe), created,
                      identity=identity)
    offset = 0
    for _ in range(MAX_BLOCKS):
        if offset + BLOCK_HEADER_SIZE > size:
            break
        header = read(offset, BLOCK_HEADER_SIZE + TOPIC.size)
        if len(header) < BLOCK_HEADER_SIZE:
            break
        magic, kind, length, payload = BLOCK.unpack_from(header)
        if magic != BLOCK_MAGIC or length < BLOCK_HEADER_SIZE:
            break           # the file was cut short: keep what came before
        body = header[BLOCK_HEADER_SIZE:]
        if kind == KIND_TOPIC and len(body) >= TOPIC.size:
            topic_id, _size, _address, name, _ = TOPIC.unpack_from(body)
            share.topics[topic_id] = _text(name)
        elif kind == KIND_SHARD and len(body) >= SHARD_FIELDS.size:
            _head, _mask, _keep, topic_id, cpu = SHARD_FIELDS.unpack_from(body)
            if topic_id != 0xFFFFFFFF:
                if len(share.shards) == MAX_SHARDS:
                    raise TracerError(f"{path}: more than {MAX_SHARDS} shards")
                share.shards.append((offset + BLOCK_HEADER_SIZE, cpu))
        elif kind == KIND_MAPS:
            text = read(offset + BLOCK_HEADER_SIZE, min(payload, MAX_MAPS_BYTES))
            share.maps_text = text.decode("utf-8", "surrogateescape")
        offset += length
    return share


def share_records(share: ShareFile, records: int) -> list[Record]:
    """The last `records` records of a share file, in order, formatted
    from the process (live) or the files its maps block names."""
    descriptor = _open(share.path)
    try:
        def read(offset: int, size: int) -> bytes:
            return os.pread(descriptor, size, offset)
        windows = [shard_window(read, offset, records, cpu)
                   for offset, cpu in share.shards]
    finally:
        os.close(descriptor)
    entries = last_entries(windows, records)
    mappings = parse_maps(share.maps_text)
    image = (ProcessImage(share.pid, mappings) if is_live(share)
             else ProcessImage.offline(share.pid, mappings))
    try:
        return [image_record(entry, image, pid=share.pid, comm=share.comm,
                             topics=share.topics) for entry in entries]
    finally:
        image.close()


def is_live(share: ShareFile) -> bool:
    """True while the process that wrote the file still maps it."""
    try:
        mappings = read_maps(share.pid)
    except OSError:
        return False
    return any((mapping.device, mapping.inode) == share.identity
               for mapping in mappings)


def share_file_of(directory: str, pid: int) -> Path | None:
    """The share file of `pid` in `directory`, if there is one: the one
    the live process maps; for a process gone, the only file claiming its
    pid (anyone may plant `a.PID.recorder` beside the real one)."""
    folder = Path(directory)
    if not folder.is_dir():
        return None
    claims = []
    for path in sorted(folder.glob(f"*.{pid}{SUFFIX}")):
        try:
            share = open_share(path)
        except TracerError:
            continue
        if share.pid != pid:
            continue
        if is_live(share):
            return path
        claims.append(path)
    if len(claims) > 1:
        raise TracerError(f"several share files claim process {pid} and it "
                          f"maps none: name one ({', '.join(map(str, claims))})")
    return claims[0] if claims else None


def list_shares(directory: str | Path) -> list[tuple[ShareFile, bool]]:
    """(share file, live) for every share file in `directory`."""
    folder = Path(directory)
    if not folder.is_dir():
        raise TracerError(f"{directory}: no such directory")
    found = []
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        try:
            share = open_share(path)
        except TracerError:
            continue
        found.append((share, is_live(share)))
    return found


def remove_stale(directory: str | Path) -> list[str]:
    """Remove the share files no process maps any more; returns them."""
    removed = []
    for share, live in list_shares(directory):
        if not live:
            Path(share.path).unlink(missing_ok=True)
            removed.append(share.path)
    return removed


def shm_snapshot(path: str | Path, records: int) -> dict[str, Any]:
    """A share file's part of a snapshot: where, whose, its last records."""
    from recorder_tracer.postmortem.snapshot_file import record_json
    try:
        share = open_share(path)
    except TracerError as error:
        return {"path": str(path), "error": str(error)}
    return {"path": share.path, "pid": share.pid, "comm": share.comm,
            "exe": share.exe,
            "topics": {str(key): name for key, name in share.topics.items()},
            "records": [record_json(record)
                        for record in share_records(share, records)]}
