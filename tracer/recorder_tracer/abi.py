"""Every constant the tracer shares with C: the probe contract's headers
(probes/include/recorder/*.h) and the BPF programs' (kernel/bpf/*.h).

One copy, here; tests/test_contract.py checks each against its header
(`HEADER_NAMES`), and the layouts against the compiler's. Modules import
from here instead of restating a number.
"""

from __future__ import annotations

import struct

# -- probes/include/recorder/entry.h -----------------------------------------
MAX_ARGS = 12                           # RECORDER_MAX_ARGS
ENTRY_VERSION = 1                       # RECORDER_ENTRY_VERSION
ENTRY_SIZE = 144                        # RECORDER_ENTRY_SIZE
# struct recorder_record: timestamp, sequence, tid, topic_id, arg_types, cpu,
# nargs, flags, format, where, args[12]
ENTRY = struct.Struct("<QQIIIHBBQQ12Q")
ARG_INT, ARG_DOUBLE, ARG_STRING, ARG_POINTER = range(4)     # recorder_arg_kind
ENTRY_FAST_TIMESTAMP = 0x1              # RECORDER_ENTRY_FAST_TIMESTAMP
ENTRY_SPAN_BEGIN = 0x2                  # RECORDER_ENTRY_SPAN_BEGIN
ENTRY_SPAN_END = 0x4                    # RECORDER_ENTRY_SPAN_END

# -- probes/include/recorder/registry.h --------------------------------------
REGISTRY_MAGIC = 0x3152444352434552     # RECORDER_REGISTRY_MAGIC, "RECRCDR1"
MAX_SHARDS = 64                         # RECORDER_MAX_SHARDS
MAX_TOPICS = 4096                       # RECORDER_MAX_TOPICS
SHARD_HEADER_SIZE = 64                  # RECORDER_SHARD_HEADER
SHARD_HEADER = struct.Struct("<QII")    # struct recorder_shard: head, mask, keep
TOPIC_ARMED_OFFSET = 32                 # offsetof(struct recorder_topic, armed)
TOPIC_SHARDS_OFFSET = 48                # offsetof(struct recorder_topic, shards)

# -- probes/include/recorder/share.h -----------------------------------------
SHARE_MAGIC = 0x3148535243455200        # RECORDER_SHARE_MAGIC, "\0RECRSH1"
SHARE_VERSION = 1                       # RECORDER_SHARE_VERSION
SHARE_BLOCK_MAGIC = 0x4B4C4252          # RECORDER_SHARE_BLOCK_MAGIC, "RBLK"
SHARE_HEADER, SHARE_TOPIC, SHARE_SHARD, SHARE_MAPS = 1, 2, 3, 4  # block kinds

# -- kernel/bpf/harvest.h ----------------------------------------------------
HARVEST_ENTRY_UNREADABLE = 0x1          # the entry pointer could not be read
HARVEST_NO_TOPIC = 0xFFFFFFFF           # a C topic's own probe: no topic id
HIST_BUCKETS = 64
VALUE_ARGS = 4                          # args[] copies in the probe's registers
HARVEST_COUNTERS = ("hits", "streamed", "stream_failed", "flight", "stats_full")

# -- kernel/bpf/snapshot.h ---------------------------------------------------
SNAPSHOT_FAULT, SNAPSHOT_ENTRY, SNAPSHOT_END = 1, 2, 3      # snapshot_kind
SNAPSHOT_GROUP_EXIT = 0x1
SNAPSHOT_ENTRY_UNREADABLE = 0x1
SNAPSHOT_ENTRY_TORN = 0x2
SNAPSHOT_COUNTERS = ("fatal", "unknown", "captured", "lost", "messages_lost")

# -- kernel/bpf/usdt.h -------------------------------------------------------
USDT_MAX_ARGS = 6
USDT_SITE_UNKNOWN = 0x1
USDT_COUNTERS = ("hits", "streamed", "stream_failed", "unknown_site")

# Python name -> (header, C name) of each number above; the counter tuples
# follow their enum (`<prefix><NAME>` in order, then `<prefix>COUNT`).
HEADER_NAMES: dict[str, tuple[str, str]] = {
    "MAX_ARGS": ("recorder/entry.h", "RECORDER_MAX_ARGS"),
    "ENTRY_VERSION": ("recorder/entry.h", "RECORDER_ENTRY_VERSION"),
    "ENTRY_SIZE": ("recorder/entry.h", "RECORDER_ENTRY_SIZE"),
    "ARG_INT": ("recorder/entry.h", "RECORDER_ARG_INT"),
    "ARG_DOUBLE": ("recorder/entry.h", "RECORDER_ARG_DOUBLE"),
    "ARG_STRING": ("recorder/entry.h", "RECORDER_ARG_STRING"),
    "ARG_POINTER": ("recorder/entry.h", "RECORDER_ARG_POINTER"),
    "ENTRY_FAST_TIMESTAMP": ("recorder/entry.h", "RECORDER_ENTRY_FAST_TIMESTAMP"),
    "ENTRY_SPAN_BEGIN": ("recorder/entry.h", "RECORDER_ENTRY_SPAN_BEGIN"),
    "ENTRY_SPAN_END": ("recorder/entry.h", "RECORDER_ENTRY_SPAN_END"),
    "REGISTRY_MAGIC": ("recorder/registry.h", "RECORDER_REGISTRY_MAGIC"),
    "MAX_SHARDS": ("recorder/registry.h", "RECORDER_MAX_SHARDS"),
    "MAX_TOPICS": ("recorder/registry.h", "RECORDER_MAX_TOPICS"),
    "SHARD_HEADER_SIZE": ("recorder/registry.h", "RECORDER_SHARD_HEADER"),
    "SHARE_MAGIC": ("recorder/share.h", "RECORDER_SHARE_MAGIC"),
    "SHARE_VERSION": ("recorder/share.h", "RECORDER_SHARE_VERSION"),
    "SHARE_BLOCK_MAGIC": ("recorder/share.h", "RECORDER_SHARE_BLOCK_MAGIC"),
    "SHARE_HEADER": ("recorder/share.h", "RECORDER_SHARE_HEADER"),
    "SHARE_TOPIC": ("recorder/share.h", "RECORDER_SHARE_TOPIC"),
    "SHARE_SHARD": ("recorder/share.h", "RECORDER_SHARE_SHARD"),
    "SHARE_MAPS": ("recorder/share.h", "RECORDER_SHARE_MAPS"),
    "HARVEST_ENTRY_UNREADABLE": ("harvest.h", "HARVEST_ENTRY_UNREADABLE"),
    "HARVEST_NO_TOPIC": ("harvest.h", "HARVEST_NO_TOPIC"),
    "HIST_BUCKETS": ("harvest.h", "HIST_BUCKETS"),
    "VALUE_ARGS": ("harvest.h", "VALUE_ARGS"),
    "SNAPSHOT_FAULT": ("snapshot.h", "SNAPSHOT_FAULT"),
    "SNAPSHOT_ENTRY": ("snapshot.h", "SNAPSHOT_ENTRY"),
    "SNAPSHOT_END": ("snapshot.h", "SNAPSHOT_END"),
    "SNAPSHOT_GROUP_EXIT": ("snapshot.h", "SNAPSHOT_GROUP_EXIT"),
    "SNAPSHOT_ENTRY_UNREADABLE": ("snapshot.h", "SNAPSHOT_ENTRY_UNREADABLE"),
    "SNAPSHOT_ENTRY_TORN": ("snapshot.h", "SNAPSHOT_ENTRY_TORN"),
    "USDT_MAX_ARGS": ("usdt.h", "USDT_MAX_ARGS"),
    "USDT_SITE_UNKNOWN": ("usdt.h", "USDT_SITE_UNKNOWN"),
}
COUNTER_ENUMS: dict[str, tuple[str, str]] = {
    "HARVEST_COUNTERS": ("harvest.h", "COUNTER_"),
    "SNAPSHOT_COUNTERS": ("snapshot.h", "SNAPSHOT_COUNT_"),
    "USDT_COUNTERS": ("usdt.h", "USDT_COUNTER_"),
}
