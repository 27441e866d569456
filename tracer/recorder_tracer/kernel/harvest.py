"""The BPF harvest program (kernel/bpf/harvest.c): its switches and maps.

Loaded through kernel/loader.py, as the USDT and snapshot programs are.

One Harvester is one loaded program and its maps; kernel/arm.py attaches it
to probe sites, kernel/stream.py drains its stream.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from recorder_tracer.abi import (
    HARVEST_COUNTERS,
    HARVEST_NO_TOPIC,
    HIST_BUCKETS,
    VALUE_ARGS,
)
from recorder_tracer.errors import TracerError
from recorder_tracer.kernel.loader import (
    load_function,
    load_program,
    possible_cpus,
    read_counters,
    struct_fields,
    struct_format,
    unload,
)

COUNTER_NAMES = HARVEST_COUNTERS
SHARED_PROBE = "recorder_dynamic"   # the probe run-time topics share (probes/)
# The probe's arguments since the registers carry copies of the entry's words
# (probes/PROBES.md); a site with other arguments gets a count-only program.
PROBE_ARGUMENTS = "8@%rax 8@%rdx 8@%rcx 8@%rsi 8@%rdi 8@%r8 8@%r9 8@%r10"
NO_TOPIC = HARVEST_NO_TOPIC


@dataclass(frozen=True)
class CpuCounters:
    """What the harvest program counted on one CPU."""

    cpu: int
    hits: int
    streamed: int
    stream_failed: int
    flight: int
    stats_full: int = 0




@dataclass
class SiteStats:
    """What the kernel aggregated for one key (see struct site_stats),
    summed over CPUs: counts, the chosen argument's sum/min/max and log2
    histogram (bucket i holds [2^(i-1), 2^i)), the log2 histogram of ns
    between records. `spans`: the values are span durations (ns)."""

    count: int = 0
    valued: int = 0
    sum: int = 0
    min: int | None = None
    max: int | None = None
    arg: int = 0
    spans: bool = False
    interval_sum: int = 0       # ns: the intervals' total
    values: list[int] = field(default_factory=lambda: [0] * HIST_BUCKETS)
    intervals: list[int] = field(default_factory=lambda: [0] * HIST_BUCKETS)

    def add(self, other: SiteStats) -> None:
        """Fold `other` in (another CPU, site or process)."""
        self.count += other.count
        self.valued += other.valued
        self.sum += other.sum
        self.interval_sum += other.interval_sum
        self.min = _pick(min, self.min, other.min)
        self.max = _pick(max, self.max, other.max)
        self.arg = other.arg if other.valued else self.arg
        self.spans = self.spans or other.spans
        self.values = [a + b for a, b in zip(self.values, other.values, strict=True)]
        self.intervals = [a + b for a, b in
                          zip(self.intervals, other.intervals, strict=True)]


def _pick(choose: Any, a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else choose(a, b)


class SiteKey(NamedTuple):
    """What metrics count by: a probe site in a process. `topic_id` is None
    for a C topic's own probe (the site names the topic) and the entry's
    topic id for the probe that run-time topics share."""

    pid: int
    address: int
    topic_id: int | None


class Harvester:
    """The loaded harvest program: its fds, record type and maps.

    `metrics`, `flight` and `stream` choose what a hit does (compile-time
    switches of harvest.c): count per site; keep the record in the per-CPU
    flight ring; send it to the per-CPU stream rings that a
    `stream.Stream` creates and reads.
    """

    def __init__(
        self,
        stream: bool = True,
        flight: bool = True,
        flight_entries: int = 1024,
        string_max: int = 64,
        metrics: bool = True,
        pin_dir: str | None = None,
    ) -> None:
        if string_max <= 0 or string_max % 8:
            raise TracerError("string size must be a positive multiple of 8")
        self.cpus = possible_cpus()
        cflags = [
            f"-DFLIGHT_ENTRIES={flight_entries}",
            f"-DHARVEST_STRING_MAX={string_max}",
            f"-DHARVEST_CPUS={self.cpus}",
        ]
        if pin_dir is not None:
            cflags.append(f'-DHARVEST_PIN_DIR="{pin_dir}"')
        self.flight_entries = flight_entries if flight else 0
        for wanted, switch in ((stream, "HARVEST_STREAM"), (flight, "HARVEST_FLIGHT"),
                               (metrics, "HARVEST_METRICS")):
            if wanted:
                cflags.append(f"-D{switch}")
        self.bpf = load_program("harvest.c", cflags, "harvest")
        self.program_fd: int = load_function(self.bpf, b"harvest")
        self.shared_program_fd: int = load_function(self.bpf, b"harvest_shared")
        self.legacy_program_fds: tuple[int, int] = (
            load_function(self.bpf, b"harvest_legacy"),
            load_function(self.bpf, b"harvest_shared_legacy"))
        # The record layout as compiled, from bcc's table description.
        self.record_type: type[ctypes.Structure] = self.bpf[b"record_layout"].Leaf
        self.stream_rings = stream     # streams into per-CPU BPF ring buffers
        self._stats: mmap.mmap | None = None
        self._stats_length = 0
        self._site_type: Any = None
        if metrics:
            table = self.bpf[b"stats"]
            self._site_type = table.Leaf
            self._stats_length = table.max_entries * ctypes.sizeof(self._site_type)
            # Writable: forget_pid() frees the slots of a process gone.
            self._stats = mmap.mmap(table.map_fd,
                                    _round_up(self._stats_length, mmap.PAGESIZE),
                                    mmap.MAP_SHARED,
                                    mmap.PROT_READ | mmap.PROT_WRITE)
            self._slot_size = ctypes.sizeof(self._site_type)
            self._slot_fields = struct_fields(self._site_type)
            self._slot_format = struct.Struct("<" + struct_format(self._site_type))

    def program_fd_for(self, probe_name: str,
                       arguments: str = PROBE_ARGUMENTS) -> int:
        """The program to attach at a `recorder:<probe_name>` site whose
        note gives `arguments` (a core built before the registers carried
        copies gets counts only, never garbage values)."""
        shared = probe_name == SHARED_PROBE
        if arguments.strip() != PROBE_ARGUMENTS:
            return self.legacy_program_fds[shared]
        return self.shared_program_fd if shared else self.program_fd

    def record_format(self) -> str:
        """The `struct` format of one record (little-endian, no alignment)."""
        return "<" + struct_format(self.record_type)

    def record_fields(self) -> list[str]:
        """Names of the values `record_format()` unpacks ("entry.nargs",
        "entry.args[0]", "strings[0].text"...), to index its tuples."""
        return struct_fields(self.record_type)

    def decode(self, data: int) -> Any:
        """The harvest_record at a raw pointer."""
        return ctypes.cast(data, ctypes.POINTER(self.record_type)).contents

    def counters(self) -> list[CpuCounters]:
        """Per-CPU counters (hits, streamed, refused, flight, stats full)."""
        return [CpuCounters(cpu, **values) for cpu, values
                in enumerate(read_counters(self.bpf, COUNTER_NAMES))]

    def flight_records(self) -> list[tuple[int, Any]]:
        """(cpu, record) of every filled slot of the kernel flight ring,
        copied out, in no particular order; a slot read while a hit
        rewrote it is left out (harvest.h's seqlock)."""
        if not self.flight_entries:
            return []
        table = self.bpf[b"flight"]
        found = []
        for slot in range(self.flight_entries):
            for cpu, record in enumerate(table[ctypes.c_int(slot)]):
                # A copy (bcc read the slot into it); one whose seqlock
                # words differ was being written meanwhile: left out.
                if record.pid and record.flight_done == record.flight_begun:
                    found.append((cpu, record))
        return found

    def site_stats(self) -> dict[SiteKey, SiteStats]:
        """Metrics per (pid, probe address, topic id), summed over CPUs,
        from the mmapped stats table: no system call per entry, and only
        claimed slots are unpacked."""
        if self._stats is None:
            return {}
        found: dict[SiteKey, SiteStats] = {}
        head = struct.Struct("<QIIQ")       # address, pid, topic_id, count
        for offset in range(0, self._stats_length, self._slot_size):
            address, pid, topic_id, count = head.unpack_from(self._stats, offset)
            if not (address and count):
                continue
            values = self._slot_format.unpack_from(self._stats, offset)
            slot = dict(zip(self._slot_fields, values, strict=True))
            stats = SiteStats(
                count=count, valued=slot["valued"], sum=slot["sum"],
                min=slot["min"] if slot["valued"] else None,
                max=slot["max"] if slot["valued"] else None,
                arg=slot["arg"], spans=bool(slot["spans"]),
                interval_sum=max(0, slot["last_ns"] - slot["first_ns"]),
                values=[slot[f"values[{i}]"] for i in range(HIST_BUCKETS)],
                intervals=[slot[f"intervals[{i}]"] for i in range(HIST_BUCKETS)])
            key = SiteKey(pid, address, None if topic_id == NO_TOPIC else topic_id)
            if key in found:
                found[key].add(stats)
            else:
                found[key] = stats
        return found

    def site_counts(self) -> dict[SiteKey, int]:
        """Hits per (pid, probe address, topic id), summed over CPUs."""
        return {key: stats.count for key, stats in self.site_stats().items()}

    def choose_value(self, pid: int, address: int, topic_id: int | None,
                     arg: int) -> None:
        """Aggregate args[`arg`] at this site (before it first fires: a slot
        takes its choice when claimed)."""
        if not 0 <= arg < VALUE_ARGS:
            raise TracerError(f"argument index {arg} out of range "
                              f"(0 to {VALUE_ARGS - 1}: those travel in registers)")
        table = self.bpf[b"value_args"]
        key = table.Key(address, pid, NO_TOPIC if topic_id is None else topic_id)
        table[key] = table.Leaf(arg)

    def forget_pid(self, pid: int) -> int:
        """Free the stats slots and choices of a process that is gone;
        returns the slots freed. Safe while BPF runs: a dead process hits
        no more, and a key claimed again elsewhere is summed with the rest."""
        if self._stats is None:
            return 0
        freed = 0
        head = struct.Struct("<QI")
        blank = bytes(self._slot_size)
        for offset in range(0, self._stats_length, self._slot_size):
            address, slot_pid = head.unpack_from(self._stats, offset)
            if address and slot_pid == pid:
                # Zero the figures, then the key: BPF sees a free slot last.
                self._stats[offset + 8:offset + self._slot_size] = blank[8:]
                self._stats[offset:offset + 8] = blank[:8]
                freed += 1
        table = self.bpf[b"value_args"]
        for key in [key for key in table if key.pid == pid]:
            del table[key]
        return freed

    def topic_counts(self) -> dict[SiteKey, int]:
        """Records counted per site; see `site_counts` (a C topic is named
        by its probe's address, a run-time topic by its id)."""
        return self.site_counts()

    def close(self) -> None:
        """Unload the programs and maps (detach first)."""
        if self._stats is not None:
            self._stats.close()
            self._stats = None
        unload(self.bpf, (self.program_fd, self.shared_program_fd,
                          *self.legacy_program_fds))


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit
