"""Named values of a live process: the seed library's channels.

`RECORDER_TRACES="topic=name1,name2"` makes the core publish, on its
registry's `channels` list (probes/PROBES.md, `struct recorder_channels`),
that args[0] of `topic` is `name1` and args[1] is `name2`. A ChannelReader
finds those names and then samples the values as the process records them,
by reading its rings through /proc/PID/mem (no BPF, no trap in the
process): each poll returns the entries written since the last one. An
entry overwritten before a poll could read it is counted as lost.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from recorder_tracer.decode.entry import RawEntry, decode_args
from recorder_tracer.errors import TracerError
from recorder_tracer.target.memory import ProcessImage
from recorder_tracer.target.rings import SHARD_HEADER, shard_window, topic_shards

REGISTRY_CHANNELS_OFFSET = 40       # offsetof(struct recorder_registry, channels)
_CHANNELS = struct.Struct("<IIQQ")  # topic_id, count, names, next
MAX_NAMINGS = 4096                  # a bound for the walk, as for topics


@dataclass(frozen=True)
class Channel:
    """args[`index`] of topic `topic` (id `topic_id`) is called `name`."""

    name: str
    topic: str
    topic_id: int
    index: int


@dataclass(frozen=True)
class Sample:
    """One value of one channel."""

    channel: str
    timestamp: int      # ns, CLOCK_MONOTONIC
    value: float


def read_channels(image: ProcessImage) -> list[Channel]:
    """Every named channel of the process, newest naming of each topic.

    A process without a core, or that named nothing, has none.
    """
    registry = image.find_registry()
    if registry is None:
        return []
    raw = image.read(registry + REGISTRY_CHANNELS_OFFSET, 8)
    if not raw or len(raw) < 8:
        return []
    address = struct.unpack("<Q", raw)[0]
    topics = {topic.id: topic.name for topic in image.topics()}
    named: set[int] = set()
    channels: list[Channel] = []
    for _ in range(MAX_NAMINGS):
        if not address:
            break
        data = image.read(address, _CHANNELS.size)
        if not data or len(data) < _CHANNELS.size:
            break
        topic_id, _count, names, address = _CHANNELS.unpack(data)
        if topic_id in named or topic_id not in topics:
            continue
        named.add(topic_id)
        for index, name in enumerate((image.string(names) or "").split(",")):
            if name:
                channels.append(Channel(name, topics[topic_id], topic_id, index))
    return sorted(channels, key=lambda c: (c.topic_id, c.index))


def select_channels(channels: list[Channel], patterns: list[str]) -> list[Channel]:
    """The channels whose whole name one of `patterns` (regular expressions,
    as the seed's scope takes them) matches; all of them without patterns.

    >>> chans = [Channel("x_value", "t", 2, 0), Channel("y_value", "t", 2, 1)]
    >>> [c.name for c in select_channels(chans, ["y.*"])]
    ['y_value']
    """
    if not patterns:
        return list(channels)
    try:
        compiled = [re.compile(pattern) for pattern in patterns]
    except re.error as error:
        raise TracerError(f"invalid channel pattern: {error}") from None
    return [c for c in channels if any(r.fullmatch(c.name) for r in compiled)]


@dataclass
class ChannelReader:
    """Samples `channels` of the process `image` from its rings."""

    image: ProcessImage
    channels: list[Channel]
    lost: int = 0
    _seen: dict[tuple[int, int], int] = field(default_factory=dict)  # shard: head

    def poll(self) -> list[Sample]:
        """Samples recorded since the last poll, oldest first."""
        by_topic: dict[int, list[Channel]] = {}
        for channel in self.channels:
            by_topic.setdefault(channel.topic_id, []).append(channel)
        topics = {topic.id: topic for topic in self.image.topics()}
        samples: list[Sample] = []
        for topic_id, wanted in by_topic.items():
            topic = topics.get(topic_id)
            if topic is None:
                continue
            for slot, shard in topic_shards(self.image.read, topic):
                for entry in self._new_entries(shard, slot):
                    samples.extend(self._values(entry, wanted))
        samples.sort(key=lambda sample: sample.timestamp)
        return samples

    def _new_entries(self, shard: int, slot: int) -> list[RawEntry]:
        header = self.image.read(shard, SHARD_HEADER.size)
        if not header or len(header) < SHARD_HEADER.size:
            return []
        head, _mask, _keep = SHARD_HEADER.unpack(header)
        seen = self._seen.get((shard, slot), 0)
        if head <= seen:
            return []
        window = shard_window(self.image.read, shard, head - seen, slot)
        fresh = [entry for entry in window if entry.sequence > seen]
        self.lost += (head - seen) - len(fresh)
        self._seen[(shard, slot)] = head
        return fresh

    def _values(self, entry: RawEntry, wanted: list[Channel]) -> list[Sample]:
        # Strings are not values: never read them.
        args = decode_args(entry.nargs, entry.arg_types, entry.args, lambda _: None)
        return [Sample(channel.name, entry.timestamp, float(args[channel.index]))
                for channel in wanted
                if channel.index < len(args)
                and isinstance(args[channel.index], int | float)]
