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

from recorder_tracer.decode.record import Record
from recorder_tracer.errors import TracerError
from recorder_tracer.target.memory import ProcessImage, parse_maps
from recorder_tracer.target.rings import entry_record, last_entries, shard_window

SHARE_MAGIC = 0x3148535243455200
BLOCK_MAGIC = 0x4B4C4252
BLOCK = struct.Struct("<IIQQ")              # magic, kind, bytes, payload_bytes
BLOCK_HEADER_SIZE = 64
FILE_HEADER = struct.Struct("<QIIIIQQ16s256s")
TOPIC = struct.Struct("<IIQ128s256s")
SHARD_FIELDS = struct.Struct("<QIIII")      # head, mask, keep, topic_id, cpu
KIND_HEADER, KIND_TOPIC, KIND_SHARD, KIND_MAPS = 1, 2, 3, 4
SUFFIX = ".recorder"


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


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def open_share(path: str | Path) -> ShareFile:
    """Parse the blocks of the share file at `path`; TracerError if it is
    not one."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise TracerError(f"{path}: {error.strerror}") from None
    if (len(data) < BLOCK_HEADER_SIZE + FILE_HEADER.size
            or BLOCK.unpack_from(data)[:2] != (BLOCK_MAGIC, KIND_HEADER)):
        raise TracerError(f"{path}: not a recorder share file")
    magic, _version, entry_size, pid, _page, created, _registry, comm, exe = (
        FILE_HEADER.unpack_from(data, BLOCK_HEADER_SIZE))
    if magic != SHARE_MAGIC or entry_size != 144:
        raise TracerError(f"{path}: not a recorder share file (bad header)")
    share = ShareFile(str(path), pid, _text(comm), _text(exe), created)
    offset = 0
    while offset + BLOCK_HEADER_SIZE <= len(data):
        magic, kind, size, payload = BLOCK.unpack_from(data, offset)
        if magic != BLOCK_MAGIC or size < BLOCK_HEADER_SIZE:
            break           # the file was cut short: keep what came before
        body = offset + BLOCK_HEADER_SIZE
        if kind == KIND_TOPIC and body + TOPIC.size <= len(data):
            topic_id, _size, _address, name, _ = TOPIC.unpack_from(data, body)
            share.topics[topic_id] = _text(name)
        elif kind == KIND_SHARD and body + SHARD_FIELDS.size <= len(data):
            _head, _mask, _keep, topic_id, cpu = SHARD_FIELDS.unpack_from(data, body)
            if topic_id != 0xFFFFFFFF:
                share.shards.append((body, cpu))
        elif kind == KIND_MAPS:
            share.maps_text = data[body:body + payload].decode("utf-8", "replace")
        offset += size
    return share


def share_records(share: ShareFile, records: int) -> list[Record]:
    """The last `records` records of a share file, in order, formatted
    from the process (live) or the files its maps block names."""
    with open(share.path, "rb") as file:
        def read(offset: int, size: int) -> bytes:
            return os.pread(file.fileno(), size, offset)
        windows = [shard_window(read, offset, records, cpu)
                   for offset, cpu in share.shards]
    entries = last_entries(windows, records)
    mappings = parse_maps(share.maps_text)
    image = (ProcessImage(share.pid, mappings) if is_live(share)
             else ProcessImage.offline(share.pid, mappings))
    try:
        return [entry_record(entry, image, share.pid, share.comm, share.topics)
                for entry in entries]
    finally:
        image.close()


def is_live(share: ShareFile) -> bool:
    """True while the process that wrote the file still maps it."""
    try:
        stat = os.stat(share.path)
        with open(f"/proc/{share.pid}/maps") as maps:
            text = maps.read()
    except OSError:
        return False
    return any(mapping.inode == stat.st_ino and mapping.device == stat.st_dev
               for mapping in parse_maps(text))


def share_file_of(directory: str, pid: int) -> Path | None:
    """The share file of `pid` in `directory`, if there is one."""
    folder = Path(directory)
    if not folder.is_dir():
        return None
    found = sorted(folder.glob(f"*.{pid}{SUFFIX}"))
    return found[0] if found else None


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
