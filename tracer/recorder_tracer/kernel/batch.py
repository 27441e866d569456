"""Load kernel/bpf/batch.c: harvest armed topics from the processes' own rings.

A `BatchHarvester` is the loaded program and its maps. `arm(pid, ...)`
tells it which topics of a process to copy and from which index of each
shard; the kernel then copies new entries in batches, in the process's own
context, when a thread leaves its CPU, on a CPU clock tick, at exit and at
a fatal signal, into per-CPU ring buffers that kernel/batch_stream.py
reads. Nothing is attached to the probe sites: an armed topic costs its
process no trap per record.

    harvester = BatchHarvester()
    base = image.topic_count()      # before the list (arm's docstring)
    harvester.arm(pid, image, [t for t in image.topics() if wanted(t)], base)
    ...
    harvester.losses()      # per (pid, topic id): streamed, overwritten, refused
"""

from __future__ import annotations

import contextlib
import ctypes
import struct
import time
from dataclasses import dataclass
from typing import Any

from recorder_tracer.errors import TracerError
from recorder_tracer.kernel.coverage import exit_tracepoint
from recorder_tracer.kernel.loader import (
    load_program,
    possible_cpus,
    require_bpf,
)
from recorder_tracer.selftrace import SESSION
from recorder_tracer.target.memory import ProcessImage, Topic

TOPICS_MAX = 32                 # BATCH_TOPICS in kernel/bpf/batch.h
NAME_MAX = 64                   # BATCH_NAME_MAX
TICK_NS = 1_000_000             # the CPU clock tick that harvests busy threads
_TOPIC_SHARDS = 48              # offsetof(struct recorder_topic, shards)
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_CPU_CLOCK = 0
COUNTER_NAMES = ("streamed", "lost", "harvests", "chunks", "strings_lost", "busy",
                 "full", "unnamed", "unfinished", "adopted", "capped")


@dataclass(frozen=True)
class TopicLoss:
    """What became of one topic's records in one process since armed."""

    streamed: int
    overwritten: int
    refused: int

    @property
    def lost(self) -> int:
        return self.overwritten + self.refused

    @property
    def produced(self) -> int:
        return self.streamed + self.lost

    def __add__(self, other: TopicLoss) -> TopicLoss:
        return TopicLoss(self.streamed + other.streamed,
                         self.overwritten + other.overwritten,
                         self.refused + other.refused)


def shard_slots() -> int:
    """Shard slots the program harvests: a power of two covering every
    possible CPU (a topic has at most 64)."""
    cpus = min(possible_cpus(), 64)
    return 1 << (cpus - 1).bit_length()


class BatchHarvester:
    """The loaded batch program: arms processes, reads its counts."""

    def __init__(self, string_max: int = 64, tick_ns: int = TICK_NS) -> None:
        bcc = require_bpf()
        if string_max <= 0 or string_max % 8:
            raise TracerError("string size must be a positive multiple of 8")
        self.slots = shard_slots()
        self.tick_ns = tick_ns
        self.exit_tracepoint = exit_tracepoint()
        cflags = [f"-DBATCH_CPUS={self.slots}", f"-DBATCH_STRING_MAX={string_max}"]
        if self.exit_tracepoint:
            cflags.append("-DBATCH_EXIT_TRACEPOINT")
        self.bpf = load_program("batch.c", cflags, "batch")
        try:
            raw_more = self.bpf.load_func(b"walk_raw_more", bcc.BPF.RAW_TRACEPOINT)
            perf_more = self.bpf.load_func(b"walk_perf_more", bcc.BPF.PERF_EVENT)
            self.bpf[b"walk_raw"][ctypes.c_int(0)] = ctypes.c_int(raw_more.fd)
            self.bpf[b"walk_perf"][ctypes.c_int(0)] = ctypes.c_int(perf_more.fd)
            # RAW_TRACEPOINT_PROBE functions are attached by bcc at load.
            self.bpf.attach_perf_event(
                ev_type=PERF_TYPE_SOFTWARE, ev_config=PERF_COUNT_SW_CPU_CLOCK,
                fn_name=b"batch_tick", sample_period=tick_ns)
        except Exception as error:
            raise TracerError(f"cannot load the BPF batch program: {error}") from None
        self.chunk_type: type[ctypes.Structure] = self.bpf[b"layout_chunk"].Leaf
        self.string_type: type[ctypes.Structure] = self.bpf[b"layout_string"].Leaf
        self._targets = self.bpf[b"targets"]
        self._cursors = self.bpf[b"cursors"]
        self._names = self.bpf[b"armed_names"]
        self._armed_names: set[bytes] = set()
        self.armed: dict[int, set[int]] = {}      # pid -> topic ids we armed
        # Processes armed with more topics than BATCH_TOPICS (the rest not
        # harvested); BPF counts those it finds later ("capped").
        self.capped_at_arm: set[int] = set()
        self._final: dict[tuple[int, int], TopicLoss] = {}

    # -- arming ---------------------------------------------------------------

    def arm(self, pid: int, image: ProcessImage, topics: list[Topic],
            base: int | None, from_start: bool = False) -> bool:
        """Harvest `topics` of `pid` from now on (`from_start`: from the
        first entry its rings still hold). False without a registry.

        `base` is the registry's topic count read before the list `topics`
        came from: BPF arms the topics of ids at or above it by name, from
        their first record, unless they are among `topics`. A topic the
        process registers while we arm it is so never missed (a count read
        after the list would hide it from both), and one of `topics`
        registered meanwhile is harvested from its first record too."""
        registry = image.find_registry()
        if registry is None or base is None:
            return False
        capped = len(topics) > TOPICS_MAX
        topics = topics[:TOPICS_MAX]
        for topic in topics:
            self._set_cursor(pid, image, topic, from_start or topic.id >= base)
        target = self._targets.Leaf()
        target.registry = registry
        target.base = 0 if from_start else base
        target.known = 0
        target.generation = 0
        target.topics = len(topics)
        # Counted here, once a process, as BPF counts a topic it finds later.
        target.capped = int(capped)
        if capped:
            self.capped_at_arm.add(pid)
        for index, topic in enumerate(topics):
            target.ids[index] = topic.id
        _left_everywhere(target, self.slots)
        self._targets[ctypes.c_uint32(pid)] = target
        self.armed[pid] = {topic.id for topic in topics}
        return True

    def arm_registry(self, pid: int, registry: int) -> None:
        """Harvest, from their first record, the topics of `pid` whose
        names are armed (`arm_names`), found by BPF from `registry`: for a
        process whose core has not registered its topics yet."""
        target = self._targets.Leaf()
        target.registry = registry
        self._targets[ctypes.c_uint32(pid)] = target
        self.armed[pid] = set()

    def _set_cursor(self, pid: int, image: ProcessImage, topic: Topic,
                    from_start: bool) -> None:
        cursor = self._cursors.Leaf()
        cursor.topic = topic.address
        if not from_start:
            shards = image.read(topic.address + _TOPIC_SHARDS, 8 * self.slots) or b""
            for slot, (shard,) in enumerate(struct.iter_unpack("<Q", shards)):
                head = image.read(shard, 8) if shard else None
                if head and len(head) == 8:
                    cursor.next[slot] = struct.unpack("<Q", head)[0]
        self._cursors[self._cursors.Key(pid, topic.id)] = cursor

    def arm_names(self, names: list[str]) -> None:
        """Topics of these names registered after their process was armed
        are harvested from their first record (found by BPF)."""
        added = False
        for name in names:
            key = name.encode()[:NAME_MAX - 1]
            if key in self._armed_names:
                continue
            try:
                self._names[self._names.Key(key)] = ctypes.c_uint8(1)
            except Exception as error:  # bcc's, when the table is full
                # Names come from traced processes (a glob spec arms what
                # they make): a full table stops discovery, not the session.
                SESSION.record("batch: armed_names full at %s: %s", name, error)
                break
            self._armed_names.add(key)
            added = True
        if added:
            self._look_everywhere()

    def _look_everywhere(self) -> None:
        """Every armed process's next harvest looks at its topics again."""
        table = self.bpf[b"generation"]
        current = table[ctypes.c_int(0)].value
        table[ctypes.c_int(0)] = ctypes.c_uint32(current + 1)

    def look_again(self, pid: int) -> None:
        """The controller read a name BPF could not: BPF's next look at
        `pid`'s topics goes ahead of its backoff (which grows while we are
        slow to read, up to seconds on a loaded machine), or after BPF gave
        the name up (its looks stop then until something changes: this)."""
        with contextlib.suppress(Exception):    # full: the backoff stands
            self.bpf[b"look_now"][ctypes.c_uint32(pid)] = ctypes.c_uint32(1)
        self._look_everywhere()

    def disarm(self, pid: int) -> dict[int, Any]:
        """Stop harvesting `pid`; returns its cursors as BPF left them, by
        topic id (loss counts are kept: `losses`)."""
        with contextlib.suppress(KeyError):
            del self._targets[ctypes.c_uint32(pid)]
        with contextlib.suppress(KeyError):
            del self.bpf[b"look_now"][ctypes.c_uint32(pid)]
        time.sleep(0.002)       # a harvest under way ends in microseconds
        left = {}
        for key, cursor in list(self._cursors.items()):
            if key.tgid == pid:
                left[key.topic_id] = cursor
                self._final[(pid, key.topic_id)] = _loss(cursor)
                del self._cursors[key]
        self.armed.pop(pid, None)
        return left

    def add_loss(self, pid: int, topic_id: int, overwritten: int) -> None:
        """Count indices the controller found overwritten at disarm."""
        seen = self._final.get((pid, topic_id), TopicLoss(0, 0, 0))
        self._final[(pid, topic_id)] = TopicLoss(
            seen.streamed, seen.overwritten + overwritten, seen.refused)

    def add_streamed(self, pid: int, topic_id: int, count: int) -> None:
        """Count entries the controller copied itself at disarm."""
        seen = self._final.get((pid, topic_id), TopicLoss(0, 0, 0))
        self._final[(pid, topic_id)] = TopicLoss(
            seen.streamed + count, seen.overwritten, seen.refused)

    # -- figures ---------------------------------------------------------------

    def topic_ids(self, pid: int) -> set[int]:
        """The topic ids harvested in `pid` now (BPF may have added some)."""
        target = self._targets.get(ctypes.c_uint32(pid))
        if target is None:
            return set()
        return {target.ids[i] for i in range(min(target.topics, TOPICS_MAX))}

    def losses(self) -> dict[tuple[int, int], TopicLoss]:
        """Per (pid, topic id): streamed, overwritten, refused."""
        found = dict(self._final)
        for key, cursor in self._cursors.items():
            found[(key.tgid, key.topic_id)] = _loss(cursor)
        return found

    def counters(self) -> list[dict[str, int]]:
        """Per-CPU counts (COUNTER_NAMES), one dict per CPU."""
        table = self.bpf[b"counters"]
        per_counter = [list(table[ctypes.c_int(index)])
                       for index in range(len(COUNTER_NAMES))]
        return [{name: values[cpu] for name, values in zip(COUNTER_NAMES, per_counter,
                                                            strict=True)}
                for cpu in range(len(per_counter[0]))]

    def close(self) -> None:
        """Detach and unload everything."""
        self.bpf.cleanup()


def _left_everywhere(target: Any, slots: int) -> None:
    """Marks every shard slot of a new target left behind since time 0:
    its first harvests on each CPU adopt the others' shards, so entries
    made on a CPU the process has left (before we armed it, or while we
    did) do not wait for it to come back or exit."""
    for slot in range(slots):
        target.left[slot] = 1


def _loss(cursor: Any) -> TopicLoss:
    return TopicLoss(cursor.streamed, cursor.overwritten, cursor.refused)
