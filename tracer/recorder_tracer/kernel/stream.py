"""Drain the per-CPU stream of harvested records, accounting for every one.

The harvest program counts, per CPU, the records it produced and those the
stream refused; we count those we received. After a final drain,
received + lost = produced, per CPU, exactly: that is what `summary()`
reports and what tests check.

A Harvester streams into one BPF ring buffer per CPU, which this module
creates, maps and reads in bulk: a poll copies every committed record of a
ring out in one slice and releases the space, with no call into Python per
record until the records are delivered. Delivery is either per record,
`on_record(cpu, raw)` with `raw` a ctypes harvest_record, or per batch,
`on_batch(cpu, batch)` with a `RecordBatch` that can also unpack every
record into a flat tuple at C speed. (bcc's own readers call back into
Python once per record: about a microsecond each before any work.)
A program with a perf-buffer stream (kernel/bpf/usdt.c) is read through
bcc's perf reader, with the same accounting.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import select
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from recorder_tracer.errors import TracerError
from recorder_tracer.kernel.harvest import Harvester

RecordHandler = Callable[[int, Any], None]

RING_HEADER = 8             # struct bpf_ringbuf_hdr: u32 len, u32 pg_off
RING_BUSY = 1 << 31         # BPF_RINGBUF_BUSY_BIT: reserved, not committed
BPF_MAP_TYPE_RINGBUF = 27
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class CpuSummary:
    """Loss accounting for one CPU."""

    cpu: int
    produced: int
    received: int
    lost: int

    @property
    def balanced(self) -> bool:
        return self.received + self.lost == self.produced


class RecordBatch:
    """Consecutive records from one CPU's ring, copied out of it.

    `data` holds `count` slots of `stride` bytes: an 8-byte ring header,
    then the harvest_record. `records()` gives ctypes records (what
    on_record receives); `tuples()` unpacks each record into one flat tuple
    in `Harvester.record_format()` order, much faster.
    """

    __slots__ = ("_record_type", "_unpacker", "count", "cpu", "data", "stride")

    def __init__(self, cpu: int, data: bytes, count: int, stride: int,
                 record_type: type[ctypes.Structure], unpacker: struct.Struct) -> None:
        self.cpu = cpu
        self.data = data
        self.count = count
        self.stride = stride
        self._record_type = record_type
        self._unpacker = unpacker

    def __len__(self) -> int:
        return self.count

    def records(self, first: int = 0) -> Iterator[Any]:
        """Each record (from index `first`) as a ctypes harvest_record, a
        copy of its own."""
        from_buffer_copy = self._record_type.from_buffer_copy
        data, stride = self.data, self.stride
        for offset in range(RING_HEADER + first * stride, self.count * stride, stride):
            yield from_buffer_copy(data, offset)

    def tuples(self) -> Iterator[tuple[Any, ...]]:
        """Each record as one flat tuple (`Harvester.record_format()`)."""
        return self._unpacker.iter_unpack(self.data)


BatchHandler = Callable[[int, RecordBatch], None]


class MappedRing:
    """One CPU's BPF ring buffer, created here and mapped for reading.

    Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position, which
    we write; page 1 the producer position; the data pages follow, mapped
    twice in a row so a record that wraps reads as one contiguous slice.
    The harvest stream (fixed-size records, below) and the batch stream
    (kernel/batch_stream.py: variable-size messages) each parse it their way.
    """

    def __init__(self, cpu: int, size: int, name: str) -> None:
        self.cpu = cpu
        self.size = size
        self.fd = _create_ring(name, size)
        page = mmap.PAGESIZE
        self._page = page
        self._mask = size - 1
        self._consumer_map = mmap.mmap(self.fd, page, mmap.MAP_SHARED,
                                       mmap.PROT_READ | mmap.PROT_WRITE)
        self._consumer = ctypes.c_uint64.from_buffer(self._consumer_map)
        self._data = mmap.mmap(self.fd, page + 2 * size, mmap.MAP_SHARED,
                               mmap.PROT_READ, offset=page)
        self.caught_up = True   # the last copy reached the producer

    def pending(self) -> int:
        """Bytes reserved in the ring and not yet released by us."""
        return _U64.unpack_from(self._data, 0)[0] - self._consumer.value

    def close(self) -> None:
        del self._consumer
        self._data.close()
        self._consumer_map.close()
        os.close(self.fd)


class _RingBuffer(MappedRing):
    """The harvest stream's ring: fixed-size records, read in bulk."""

    def __init__(self, cpu: int, size: int, stride: int) -> None:
        super().__init__(cpu, size, f"stream_cpu{cpu}")
        self.stride = stride
        self._view = memoryview(self._data)
        self._committed = stride - RING_HEADER     # a header's len, committed

    def take(self) -> tuple[bytes, int] | None:
        """Copy out every committed record up to the first one still being
        written, release their space; None when there is none."""
        consumer = self._consumer.value
        available = _U64.unpack_from(self._data, 0)[0] - consumer
        self.caught_up = available <= 0
        if available <= 0:
            return None
        start = self._page + (consumer & self._mask)
        stride = self.stride
        slots = available // stride
        # Every record has the same size, so the headers sit `stride` apart:
        # read all of their length words in one C-level pass.
        with self._view[start:start + slots * stride] as region:
            lengths = region.cast("I")[::stride // 4].tolist()
        ready = slots
        if lengths.count(self._committed) != slots:
            ready = next(i for i, length in enumerate(lengths)
                         if length != self._committed)
            if not lengths[ready] & RING_BUSY:     # harvest.c never discards
                raise TracerError(f"stream ring {self.cpu}: unexpected record "
                                  f"header {lengths[ready]:#x}")
        self.caught_up = ready == slots
        if ready == 0:
            return None
        data = self._data[start:start + ready * stride]
        self._consumer.value = consumer + ready * stride
        return data, ready

    def close(self) -> None:
        self._view.release()
        super().close()


def _create_ring(name: str, size: int) -> int:
    """A new BPF ring buffer map of `size` bytes; returns its fd."""
    from bcc.libbcc import lib
    create = lib.bcc_create_map
    create.restype = ctypes.c_int
    create.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_int]    # type, name, key, value,
    fd = create(BPF_MAP_TYPE_RINGBUF, name.encode(), 0, 0, size, 0)  # size, flags
    if fd < 0:
        raise TracerError(f"cannot create the stream ring {name} of {size} bytes: "
                          f"{os.strerror(ctypes.get_errno())}")
    return fd


class Stream:
    """Per-CPU stream of one Harvester, delivering records as they come.

    `pages_per_cpu` sizes each CPU's ring (rounded up to a power of two).
    The program wakes us every `wakeup_events` records per CPU (a power of
    two; by default a quarter of a ring), and `poll` reads what is there
    after at most its timeout anyway.

    `drained_ns` (CLOCK_MONOTONIC) is the last moment before a read that
    took every record of every ring: all committed before it have been
    delivered (None: no such read yet). The reorder buffer lets records
    go by it (decode/reorder.py).
    """

    def __init__(
        self,
        harvester: Harvester,
        on_record: RecordHandler | None = None,
        pages_per_cpu: int = 256,
        wakeup_events: int | None = None,
        on_batch: BatchHandler | None = None,
    ) -> None:
        if on_record is None and on_batch is None:
            raise ValueError("Stream needs on_record or on_batch")
        self.harvester = harvester
        self.on_record = on_record
        self.on_batch = on_batch
        self.received: dict[int, int] = {}
        self.lost_reported: dict[int, int] = {}
        self._rings: list[_RingBuffer] = []
        self._epoll: select.epoll | None = None
        self._unfinished: tuple[RecordBatch, int] | None = None
        self.drained_ns: int | None = None
        # poll() and drain() may come from different threads (a process's
        # exit drains the stream): one reader at a time moves the rings'
        # consumer positions.
        self._reading = threading.RLock()
        if getattr(harvester, "stream_rings", False):
            self._open_rings(pages_per_cpu, wakeup_events)
        else:
            if on_record is None:
                raise ValueError("a perf-buffer stream delivers per record only")
            self._open_perf_buffers(pages_per_cpu, wakeup_events or 32)

    # -- ring buffers (the harvest program) -----------------------------------

    def _open_rings(self, pages_per_cpu: int, wakeup_events: int | None) -> None:
        harvester = self.harvester
        record_size = ctypes.sizeof(harvester.record_type)
        stride = -(-(record_size + RING_HEADER) // 8) * 8
        size = mmap.PAGESIZE * _power_of_two_at_least(max(1, pages_per_cpu))
        capacity = size // stride
        wake = _power_of_two_at_most(max(1, capacity // 4))
        if wakeup_events is not None:
            wake = min(wake, _power_of_two_at_most(max(1, wakeup_events)))
        self.wakeup_events = wake
        self._unpacker = struct.Struct(
            f"<{RING_HEADER}x" + harvester.record_format()[1:]
            + f"{stride - RING_HEADER - record_size}x")
        harvester.bpf[b"stream_config"][ctypes.c_int(0)] = ctypes.c_uint64(wake - 1)
        outer = harvester.bpf[b"stream_rings"]
        self._epoll = select.epoll()
        for cpu in self._online_cpus():
            ring = _RingBuffer(cpu, size, stride)
            self._rings.append(ring)
            self.received[cpu] = 0
            self.lost_reported[cpu] = 0
            outer[ctypes.c_int(cpu)] = ctypes.c_int(ring.fd)
            self._epoll.register(ring.fd, select.EPOLLIN)

    def _read_rings(self) -> int:
        """Deliver what every ring holds now; returns the records delivered."""
        started = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        delivered = self._read_each_ring()
        # A record still being written stopped a ring's read: not drained.
        if all(ring.caught_up for ring in self._rings):
            self.drained_ns = started
        return delivered

    def _read_each_ring(self) -> int:
        delivered = self._deliver_unfinished()
        for ring in self._rings:
            taken = ring.take()
            if taken is None:
                continue
            data, count = taken
            self.received[ring.cpu] += count
            delivered += count
            batch = RecordBatch(ring.cpu, data, count, ring.stride,
                                self.harvester.record_type, self._unpacker)
            if self.on_batch is not None:
                self.on_batch(ring.cpu, batch)
            else:
                self._deliver(batch, 0)
        return delivered

    def _deliver(self, batch: RecordBatch, first: int) -> None:
        """Hand records `first`.. of `batch` to on_record. If it raises
        (Ctrl-C lands anywhere), the rest wait for the next poll or drain:
        the records counted received are all delivered."""
        assert self.on_record is not None
        on_record, cpu = self.on_record, batch.cpu
        done = first
        try:
            for record in batch.records(first):
                done += 1
                on_record(cpu, record)
        except BaseException:
            if done < batch.count:
                self._unfinished = (batch, done)
            raise

    def _deliver_unfinished(self) -> int:
        if self._unfinished is None:
            return 0
        batch, first = self._unfinished
        self._unfinished = None
        self._deliver(batch, first)
        return batch.count - first

    # -- perf buffers (kernel/bpf/usdt.c) -------------------------------------

    def _open_perf_buffers(self, pages_per_cpu: int, wakeup_events: int) -> None:
        table = self.harvester.bpf[b"stream"]
        record_pointer = ctypes.POINTER(self.harvester.record_type)
        on_record = self.on_record
        assert on_record is not None

        def deliver(cpu: int, data: int, size: int) -> None:
            record = ctypes.cast(data, record_pointer).contents
            self.received[cpu] = self.received.get(cpu, 0) + 1
            on_record(cpu, record)

        for cpu in self._online_cpus():
            self.received[cpu] = 0
            self.lost_reported[cpu] = 0
            # bcc's public open_perf_buffer hides which CPU lost records.
            table._open_perf_buffer(
                cpu, deliver, pages_per_cpu, self._lost_callback(cpu),
                wakeup_events,
            )

    def _lost_callback(self, cpu: int) -> Callable[[int], None]:
        def lost(count: int) -> None:
            self.lost_reported[cpu] += count
        return lost

    # -- both -----------------------------------------------------------------

    @staticmethod
    def _online_cpus() -> list[int]:
        from bcc.utils import get_online_cpus
        return list(get_online_cpus())

    def poll(self, timeout_ms: int = 100) -> None:
        """Deliver what arrived within `timeout_ms`, then what sits below
        the wakeup threshold."""
        if self._epoll is None:
            self.harvester.bpf.perf_buffer_poll(timeout=timeout_ms)
            started = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            self.harvester.bpf.perf_buffer_consume()    # reads each buffer empty
            self.drained_ns = started
            return
        self._epoll.poll(timeout_ms / 1000)
        with self._reading:
            self._read_rings()

    def drain(self) -> None:
        """Deliver everything still buffered."""
        if self._epoll is None:
            for _ in range(3):
                self.harvester.bpf.perf_buffer_consume()
            return
        # A record reserved but not yet committed when we look is read on
        # a later pass: a hit in progress ends within microseconds.
        with self._reading:
            for _ in range(100):
                self._read_rings()
                if not any(ring.pending() for ring in self._rings):
                    return
                time.sleep(0.001)

    def summary(self) -> list[CpuSummary]:
        """Per-CPU produced, received and lost; call after drain()."""
        result = []
        for counters in self.harvester.counters():
            received = self.received.get(counters.cpu, 0)
            produced = counters.streamed + counters.stream_failed
            result.append(
                CpuSummary(counters.cpu, produced, received,
                           counters.stream_failed)
            )
        return result

    def close(self) -> None:
        """Unhook and unmap the rings (records still in them are dropped)."""
        if self._epoll is None:
            return
        outer = self.harvester.bpf[b"stream_rings"]
        for ring in self._rings:
            with contextlib.suppress(Exception):   # the program may be unloaded
                del outer[ctypes.c_int(ring.cpu)]
            ring.close()
        self._rings.clear()
        self._epoll.close()
        self._epoll = None


def _power_of_two_at_least(value: int) -> int:
    return 1 << (value - 1).bit_length()


def _power_of_two_at_most(value: int) -> int:
    return 1 << (value.bit_length() - 1)
