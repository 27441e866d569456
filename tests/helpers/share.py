"""RECORDER_SHARE files parsed with struct, from the layout that
probes/include/recorder/share.h defines and probes/PROBES.md documents:
the tests' own reader, independent of the tracer's target/shm.py."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = struct.Struct("<IIQQ40x")  # magic, kind, bytes, payload_bytes
HEADER = struct.Struct("<QIIIIQQ16s256s")
TOPIC = struct.Struct("<IIQ128s256s")
SHARD = struct.Struct("<QIIII40x")  # head, mask, keep, topic_id, cpu
ENTRY = struct.Struct("<QQIIIHBBQQ12q")

FILE_MAGIC = 0x3148535243455200
BLOCK_MAGIC = 0x4B4C4252
HEADER_KIND, TOPIC_KIND, SHARD_KIND, MAPS_KIND = 1, 2, 3, 4


@dataclass
class Shard:
    head: int
    mask: int
    keep: int
    topic_id: int
    cpu: int
    entries: list[tuple[int, ...]] = field(default_factory=list)  # oldest first


@dataclass
class ShareFile:
    pid: int
    entry_size: int
    command: str
    executable: str
    topics: dict[str, int]  # name -> id
    descriptions: dict[str, str]  # name -> description
    shards: list[Shard]
    maps: str


def cstring(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode()


def blocks(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(kind, payload offset, payload bytes) of every block, in file order."""
    offset = 0
    while offset < len(data):
        magic, kind, size, payload = BLOCK.unpack_from(data, offset)
        assert magic == BLOCK_MAGIC, f"bad block magic at {offset}"
        assert size > 0 and size % 4096 == 0
        yield kind, offset + BLOCK.size, payload
        offset += size
    assert offset == len(data)


def parse(path: Path) -> ShareFile:
    data = path.read_bytes()
    parsed = ShareFile(0, 0, "", "", {}, {}, [], "")
    for index, (kind, at, payload) in enumerate(blocks(data)):
        if kind == HEADER_KIND:
            assert index == 0
            (
                magic,
                version,
                entry_size,
                pid,
                page_size,
                _created,
                _registry,
                command,
                executable,
            ) = HEADER.unpack_from(data, at)
            assert (magic, version, page_size) == (FILE_MAGIC, 1, 4096)
            parsed.pid, parsed.entry_size = pid, entry_size
            parsed.command, parsed.executable = cstring(command), cstring(executable)
        elif kind == TOPIC_KIND:
            topic_id, _size, _address, name, description = TOPIC.unpack_from(data, at)
            parsed.topics[cstring(name)] = topic_id
            parsed.descriptions[cstring(name)] = cstring(description)
        elif kind == MAPS_KIND:
            parsed.maps = data[at : at + payload].decode()
        elif kind == SHARD_KIND:
            shard = Shard(*SHARD.unpack_from(data, at))
            first = max(0, shard.head - shard.keep)
            for index_in_shard in range(first, shard.head):
                slot = at + SHARD.size + (index_in_shard & shard.mask) * ENTRY.size
                entry = ENTRY.unpack_from(data, slot)
                assert entry[1] == index_in_shard + 1, "sequence != index + 1"
                shard.entries.append(entry)
            parsed.shards.append(shard)
    return parsed


def shard_of(share: ShareFile, topic: str) -> Shard:
    (shard,) = [s for s in share.shards if s.topic_id == share.topics[topic]]
    return shard


def topic_entries(share: ShareFile, topic: str) -> list[tuple[int, ...]]:
    """Every kept entry of `topic`, from each of its shards (one per CPU its
    threads recorded on), by timestamp."""
    return sorted(entry for shard in share.shards
                  if shard.topic_id == share.topics[topic]
                  for entry in shard.entries)


def arguments(shard: Shard, count: int) -> list[tuple[int, ...]]:
    """The first `count` arguments of each kept entry."""
    return [tuple(entry[10 : 10 + count]) for entry in shard.entries]
