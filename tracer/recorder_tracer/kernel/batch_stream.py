"""Read the batch program's per-CPU rings: chunks of entries, then strings.

kernel/bpf/batch.c sends, per CPU, CHUNK messages (up to 16 consecutive
entries of one shard, copied with one read) followed by STRING messages
(the text of their %s arguments, read at harvest time). A `BatchStream`
creates and maps one BPF ring buffer per CPU, copies out what is committed
in one slice per ring, and hands each entry to `on_record(cpu, record)` as
a `BatchRecord`, which has what the session's decoder reads of a harvest
record (pid, comm, status, probe_address, entry, strings).

Accounting: per CPU, the program counts the entries it streamed and the
indices it lost (overwritten in the process's ring before a harvest got
there, or refused by a full stream at a final harvest); we count the
entries received. After a drain, received + lost = produced, per CPU; per
(pid, topic), `BatchHarvester.losses()` says the same.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import select
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from recorder_tracer.abi import ENTRY
from recorder_tracer.decode.batch_strings import AwaitedStrings
from recorder_tracer.decode.chunk_kind import chunk_of_one_kind, has_string_argument
from recorder_tracer.decode.entry import BatchRecord, CapturedString
from recorder_tracer.decode.ring_messages import MESSAGE_COST, TAKE_MAX, MessageRing
from recorder_tracer.kernel.batch import BatchHarvester
from recorder_tracer.kernel.stream import CpuSummary, _power_of_two_at_least
from recorder_tracer.target.memory import ProcessImage, Topic

# enum batch_kind, kernel/bpf/batch.h
MSG_CHUNK, MSG_STRING, MSG_TOPIC, MSG_UNNAMED = 1, 2, 3, 4
_U64 = struct.Struct("<Q")
_HEAD = struct.Struct("<II")        # kind, pid

# The messages' heads (tracer/recorder_tracer/kernel/bpf/batch.h), checked
# against the compiled layout when a stream opens; a capture file's reader
# (output/capture.py) decodes with them without loading BPF.
# kind pid topic count skip shard reserved first comm
CHUNK_HEAD = struct.Struct("<IIIHHIIQ16s")
CHUNK_SKIP_AT = 14      # the head's skip: entries before it were delivered
STRING_HEAD = struct.Struct("<IIIIQIi")     # kind pid topic shard index arg length
ENTRY_SIZE = 144
# What all rings' backlogs and the read under way hold (decode/ring_messages.py:
# copied regions and their messages' views; at least TAKE_MAX a CPU);
# beyond, BPF waits. 16 MiB: bench/README.md, issue-14m.
BACKLOG_MAX = 16 << 20
REFILL_CHUNKS = 32      # chunks decoded between two refills (~500 entries)


RecordHandler = Callable[[int, Any], None]
# A chunk without %s arguments: cpu, pid, comm, entries (abi.ENTRY tuples, or
# None: of one kind, left in the bytes), one kind, bytes
ChunkHandler = Callable[[int, int, bytes, Any, bool, memoryview], None]
MessageHandler = Callable[[int, int, memoryview], None]
TopicHandler = Callable[[int, Topic], None]
# pid, topic id, where its name is: BPF could not read it (batch.c discover)
UnnamedHandler = Callable[[int, int, int], None]


class BatchStream:
    """The batch program's stream, delivering one record per entry."""

    def __init__(self, harvester: BatchHarvester, on_record: RecordHandler,
                 pages_per_cpu: int = 1024,
                 on_topic: TopicHandler | None = None,
                 on_message: MessageHandler | None = None,
                 on_unnamed: UnnamedHandler | None = None,
                 on_chunk: ChunkHandler | None = None) -> None:
        self.harvester = harvester
        self.on_record = on_record
        # Batch mode: a chunk whole (with %s arguments: each to on_record).
        self.on_chunk = on_chunk
        # Raw mode (a capture file): every message as BPF wrote it, undecoded.
        self.on_message = on_message
        self.on_topic = on_topic
        self.on_unnamed = on_unnamed
        self._topic = struct.Struct("<IIIIQ")   # kind pid id size address
        self._topic_name = harvester.bpf[b"layout_topic"].Leaf.name.offset
        self.received: dict[int, int] = {}
        self.strings_received = 0
        # Copied by us from a process's rings when it was disarmed alive
        # (a stream too full to take them before): per shard slot (CPU).
        self.flushed: dict[int, int] = {}
        self.flush_lost: dict[int, int] = {}
        self._entry_type, self._entries_offset, self._string_text = (
            _checked_layouts(harvester))
        self._entry_size = ENTRY_SIZE
        self._header, self._string_head = CHUNK_HEAD, STRING_HEAD
        self._strings = AwaitedStrings()
        self._held: list[tuple[int, memoryview]] = []     # chunks awaiting strings
        self._unread: list[tuple[MessageRing, memoryview]] = []     # see _decode
        # Every message committed before it is delivered (decode/reorder.py);
        # None: not known yet. `_read_ns`: when the last whole read began.
        self.drained_ns: int | None = None
        self._read_ns: int | None = None
        self._reading = threading.RLock()
        self.refills = 0        # refill() calls: every REFILL_CHUNKS, while emitting
        self._final_read = False    # drain()'s last reads: refill() does nothing
        size = mmap.PAGESIZE * _power_of_two_at_least(max(1, pages_per_cpu))
        harvester.bpf[b"stream_config"][ctypes.c_int(0)] = ctypes.c_uint64(size // 4)
        outer = harvester.bpf[b"stream_rings"]
        self._epoll = select.epoll()
        self._rings: list[MessageRing] = []
        from bcc.utils import get_online_cpus
        for cpu in (cpus := get_online_cpus()):
            ring = MessageRing(cpu, size, BACKLOG_MAX // len(cpus))
            self._rings.append(ring)
            self.received[cpu] = 0
            outer[ctypes.c_int(cpu)] = ctypes.c_int(ring.fd)
            self._epoll.register(ring.fd, select.EPOLLIN)

    # -- reading -------------------------------------------------------------

    def _read(self, final: bool = False) -> int:
        """Deliver what the rings hold; a chunk with %s arguments waits one
        read for its strings (sent after it), unless `final`."""
        started = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        delivered = self._read_once(final)
        whole = all(ring.caught_up and not ring.backlog for ring in self._rings)
        # A chunk held for its strings is delivered by the next read: what
        # came before the previous whole read is out, and, with none held,
        # what came before this one.
        if whole and not self._held:
            self.drained_ns = started
        elif self._read_ns is not None:
            self.drained_ns = max(self.drained_ns or 0, self._read_ns)
        self._read_ns = started if whole else None
        return delivered

    def _read_once(self, final: bool) -> int:
        try:
            return self._read_raw() if self.on_message is not None else (
                self._decode(final))
        finally:
            _release(self._rings, self._held + [
                (ring.cpu, message) for ring, message in self._unread])

    def _decode(self, final: bool) -> int:
        delivered = 0
        held, self._held = self._held, []
        taken, self._unread = self._unread, []
        taken += [(ring, message) for ring in self._rings for message in ring.take()]
        fresh: list[Any] = []       # (ring, chunk), None once decoded
        done = [0, 0]               # of taken and of held: handed on
        try:
            for ring, message in taken:
                done[0] += 1
                self._sort(ring, message, fresh)
            for cpu, message in held:
                done[1] += 1
                delivered += self._deliver(cpu, message)
            for number, (ring, message) in enumerate(fresh, 1):
                if not final and number % REFILL_CHUNKS == 0:
                    self.refill()
                fresh[number - 1], cpu = None, ring.cpu     # its region: with its last
                share = len(message) + MESSAGE_COST     # given back once delivered:
                if self.on_chunk is not None:           # one held for its strings
                    taken_now = self._deliver_chunk(cpu, message)   # stays counted
                    if taken_now is not None:
                        ring.done(share)
                        delivered += taken_now
                        continue
                if not final and self._has_strings(message):
                    self._held.append((cpu, memoryview(bytes(message))))
                else:
                    ring.done(share)
                    delivered += self._deliver(cpu, message)
        except BaseException:   # a handler raised: what was not handed on
            self._held[:0] = held[done[1]:]     # waits for the next read,
            self._unread = [(ring, memoryview(bytes(message))) for ring, message in
                            [item for item in fresh if item] + taken[done[0]:]]
            raise       # copied (the regions are released), counted as held
        self._strings.age(final)
        return delivered

    def _sort(self, ring: MessageRing, message: memoryview, fresh: list[Any]) -> None:
        """A taken message: a chunk to `fresh`, a string kept, a notice told."""
        kind = _HEAD.unpack_from(message, 0)[0]
        if kind == MSG_CHUNK:
            fresh.append((ring, message))
        elif kind == MSG_STRING:
            self._keep_string(message)
        elif kind == MSG_TOPIC and self.on_topic is not None:
            self._announce(message)
        elif kind == MSG_UNNAMED:
            self._unnamed(message)

    def _announce(self, message: memoryview) -> None:
        assert self.on_topic is not None
        _kind, pid, topic_id, size, address = self._topic.unpack_from(message, 0)
        name = bytes(message[self._topic_name:]).split(b"\0", 1)[0]
        self.on_topic(pid, Topic(topic_id, name.decode(errors="replace"), size, 0,
                                 "", address))

    def _read_raw(self) -> int:
        assert self.on_message is not None
        delivered = 0
        for ring in self._rings:
            for message in ring.take():
                kind = _HEAD.unpack_from(message, 0)[0]
                if kind == MSG_CHUNK:
                    count, skip = CHUNK_HEAD.unpack_from(message, 0)[3:5]
                    self.received[ring.cpu] += count - skip
                    delivered += count - skip
                if kind == MSG_UNNAMED:
                    self._unnamed(message)
                    continue
                self.on_message(ring.cpu, kind, message)
        return delivered

    def _unnamed(self, message: memoryview) -> None:
        if self.on_unnamed is not None:
            _kind, pid, topic_id, _size, name_at = self._topic.unpack_from(message, 0)
            self.on_unnamed(pid, topic_id, name_at)

    def _keep_string(self, message: memoryview) -> None:
        _kind, pid, topic, shard, index, arg, length = self._string_head.unpack_from(
            message, 0)
        text = bytes(message[self._string_text:self._string_text + max(0, length)])
        self._strings.keep((pid, topic, shard, index), arg,
                           CapturedString(length, text))
        self.strings_received += 1

    def _has_strings(self, message: memoryview) -> bool:
        types_at = self._entries_offset + self._entry_type.arg_types.offset
        return any(has_string_argument(struct.unpack_from(
            "<I", message, types_at + i * self._entry_size)[0])
            for i in range(self._header.unpack_from(message, 0)[3]))

    def _deliver_chunk(self, cpu: int, message: memoryview) -> int | None:
        """A chunk to on_chunk whole (of one kind: left in its bytes); None
        (nothing done) when one has a %s argument: on_record takes those."""
        assert self.on_chunk is not None
        _kind, pid, _topic, count, skip, _shard, _r, _first, comm = (
            self._header.unpack_from(message, 0))
        offset = self._entries_offset
        data = message[offset + skip * ENTRY_SIZE:offset + count * ENTRY_SIZE]
        # One kind: unpacked by on_chunk where needed (a plan reads its fields).
        # No %s argument in any (the first, if one kind): nothing to wait for.
        one_kind = chunk_of_one_kind(data)
        entries: list[Any] | None
        if one_kind:
            entries = None
            strings = has_string_argument(ENTRY.unpack_from(data)[4])
        else:
            entries = list(ENTRY.iter_unpack(data))
            strings = any(has_string_argument(e[4]) for e in entries)
        if strings:
            return None
        taken = len(data) // ENTRY_SIZE
        self.received[cpu] += taken
        if taken:
            self.on_chunk(cpu, pid, comm.split(b"\0", 1)[0], entries, one_kind, data)
        return taken

    def _deliver(self, cpu: int, message: memoryview) -> int:
        _kind, pid, topic, count, skip, shard, _r, first, comm = (
            self._header.unpack_from(message, 0))
        comm = comm.split(b"\0", 1)[0]
        entry_type, size = self._entry_type, self._entry_size
        offset = self._entries_offset
        for i in range(skip, count):
            entry = entry_type.from_buffer_copy(message, offset + i * size)
            strings: list[CapturedString | None] = []
            captured = self._strings.pop((pid, topic, shard, first + i))
            if captured is not None or entry.arg_types & 0xAAAAAA:
                for arg in range(min(entry.nargs, 12)):
                    if (entry.arg_types >> (2 * arg)) & 3 == 2:
                        strings.append(captured.get(arg) if captured else None)
            self.received[cpu] += 1
            try:
                self.on_record(cpu, BatchRecord(pid, comm, entry, strings))
            except BaseException:   # the entries after it: the next read's
                if i + 1 < count:
                    self._held.append((cpu, _skipping(message, i + 1)))
                raise
        return count - skip

    def finish(self, pid: int, image: ProcessImage | None) -> None:
        """Disarm `pid`, then copy what BPF had not harvested from its rings
        (`image`, alive; a full stream left it there), counted on its shard's CPU."""
        left = self.harvester.disarm(pid)
        if image is None or not left:
            return
        _flush_left(self, pid, image, left)

    def refill(self) -> None:
        """Copy what the rings hold to their backlogs (the next read's)."""
        if self._final_read:    # what it copied would be read by nobody
            return
        self.refills += 1
        for ring in self._rings:
            ring.refill()

    def poll(self, timeout_ms: int = 100) -> None:
        """Deliver what arrived within `timeout_ms`."""
        if not (self._unread or any(ring.backlog for ring in self._rings)):
            self._epoll.poll(timeout_ms / 1000)
        with self._reading:
            self._read()

    def catch_up(self) -> None:
        """Read, 1 ms apart, until nothing is left or held (at most a full
        ring's worth of TAKE_MAX reads, and 100 for late writers); a chunk
        still waits a read for its strings, which, at a process's exit
        (session/loop.py), a live one's BPF run may still be sending."""
        full_ring = max((ring.size for ring in self._rings), default=0) // TAKE_MAX + 1
        with self._reading:
            for _ in range(full_ring + 100):
                self._read()
                if not self._held and not any(
                        ring.pending() or ring.backlog for ring in self._rings):
                    return
                time.sleep(0.001)

    def drain(self) -> None:
        """At the session's end: catch up, then deliver even a chunk whose
        strings have not come (nothing will send them any more)."""
        with self._reading:
            self.catch_up()
            self._final_read = True     # a sink's flush may ask for a refill:
            try:                        # its copy would wait for no read
                for _ in range(3):
                    self._read(final=True)
                    if not any(ring.pending() for ring in self._rings):
                        break
            finally:
                self._final_read = False

    def summary(self) -> list[CpuSummary]:
        """Per-CPU produced, received and lost; call after drain()."""
        return [_cpu_summary(cpu, counts, self.received.get(cpu, 0),
                             self.flushed.get(cpu, 0), self.flush_lost.get(cpu, 0))
                for cpu, counts in enumerate(self.harvester.counters())]

    def close(self) -> None:
        """Unhook and unmap the rings."""
        outer = self.harvester.bpf[b"stream_rings"]
        for ring in self._rings:
            with contextlib.suppress(Exception):
                del outer[ctypes.c_int(ring.cpu)]
            ring.close()
        self._rings.clear()
        self._epoll.close()


def _cpu_summary(cpu: int, counts: dict[str, int], received: int, flushed: int,
                 flush_lost: int) -> CpuSummary:
    """A CPU's account: what we copied from processes' rings ourselves
    (flushed) counts as streamed and received."""
    lost = counts["lost"] + flush_lost
    produced = counts["streamed"] + flushed + lost
    return CpuSummary(cpu, produced, received + flushed, lost)


def _checked_layouts(harvester: BatchHarvester) -> tuple[Any, int, int]:
    """The compiled program's entry type, and the offsets of a chunk's
    entries and of a string's text, checked against the heads we unpack."""
    fields = dict((name, kind) for name, kind, *_ in harvester.chunk_type._fields_)
    entry_type = fields["entries"]._type_
    entries_offset = harvester.chunk_type.entries.offset
    string_text = harvester.string_type.text.offset
    assert CHUNK_HEAD.size == entries_offset
    assert ctypes.sizeof(entry_type) == ENTRY_SIZE
    assert string_text == STRING_HEAD.size
    return entry_type, entries_offset, string_text


def _release(rings: list[MessageRing], held: list[tuple[int, memoryview]]) -> None:
    """What take() copied is free again, but for chunks held for their
    strings (copied out of it): the next read's."""
    carried: dict[int, int] = {}
    for cpu, message in held:
        carried[cpu] = carried.get(cpu, 0) + len(message) + MESSAGE_COST
    for ring in rings:
        ring.release(carried.get(ring.cpu, 0))


def _skipping(message: memoryview, skip: int) -> memoryview:
    """A copy of chunk `message` whose entries before `skip` are delivered."""
    chunk = bytearray(message)
    struct.pack_into("<H", chunk, CHUNK_SKIP_AT, skip)
    return memoryview(bytes(chunk))


def _deliver_flushed(stream: BatchStream, slot: int, pid: int, topic_id: int,
                     index: int, data: bytes) -> None:
    """One entry copied by us at disarm: as a record, or as a chunk of one
    in raw mode."""
    if stream.on_message is not None:
        head = CHUNK_HEAD.pack(MSG_CHUNK, pid, topic_id, 1, 0, slot, 0, index, b"")
        stream.on_message(slot, MSG_CHUNK, memoryview(head + data))
        return
    entry = stream._entry_type.from_buffer_copy(data)
    stream.on_record(slot, BatchRecord(pid, b"", entry, []))


def _flush_left(stream: BatchStream, pid: int, image: ProcessImage,
                left: dict[int, Any]) -> None:
    """BatchStream.finish: the entries of each shard of `pid`'s topics from
    where BPF stopped (`left`: topic id -> cursor), streamed out one by one
    (not buffered: the ring's size is the process's to say), counted on the
    shard's slot."""
    harvester = stream.harvester
    for topic_id, cursor in left.items():
        for slot in range(harvester.slots):
            shard = _read_u64(image, cursor.topic + 48 + 8 * slot)
            header = image.read(shard, 12) if shard else None
            if not header or len(header) < 12:
                continue
            head, mask = struct.unpack("<QI", header)
            first = max(cursor.next[slot], head - (mask + 1))   # older: overwritten
            lost, copied = first - cursor.next[slot], 0
            for index in range(first, head):
                data = image.read(shard + 64 + (index & mask) * ENTRY_SIZE, ENTRY_SIZE)
                if (data and len(data) == ENTRY_SIZE and stream._entry_type
                        .from_buffer_copy(data).sequence == index + 1):
                    copied += 1
                    _deliver_flushed(stream, slot, pid, topic_id, index, data)
                else:
                    lost += 1
            stream.flushed[slot] = stream.flushed.get(slot, 0) + copied
            stream.flush_lost[slot] = stream.flush_lost.get(slot, 0) + lost
            harvester.add_streamed(pid, topic_id, copied)
            harvester.add_loss(pid, topic_id, lost)


def _read_u64(image: ProcessImage, address: int) -> int:
    data = image.read(address, 8)
    return struct.unpack("<Q", data)[0] if data and len(data) == 8 else 0
