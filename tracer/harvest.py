"""Compile, load and read the BPF harvest program (tracer/bpf/harvest.c).

One Harvester is one loaded program and its maps; tracer/arm.py attaches it
to probe sites, tracer/stream.py drains its stream.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from recorder_tracer.arm import forget_bcc_program, register_bcc_program
from recorder_tracer.errors import TracerError

BPF_DIR = Path(__file__).resolve().parent / "bpf"
PROBES_INCLUDE = Path(__file__).resolve().parent.parent / "probes" / "include"
COUNTER_NAMES = ("hits", "streamed", "stream_failed", "flight", "stats_full")
SHARED_PROBE = "recorder_dynamic"   # the probe run-time topics share (probes/)
NO_TOPIC = 0xFFFFFFFF               # HARVEST_NO_TOPIC in tracer/bpf/harvest.h


def require_bpf() -> Any:
    """Import bcc, or fail with the fix; also checks for root."""
    if os.geteuid() != 0:
        raise TracerError("must run as root (BPF and uprobes need it)")
    try:
        import bcc
    except ImportError:
        raise TracerError(
            "bcc is not available: run `sudo vagrant/provision.sh` "
            "(installs Debian's python3-bpfcc)"
        ) from None
    return bcc


def possible_cpus() -> int:
    """How many CPU ids the kernel may use (per-CPU maps are that long)."""
    from bcc.utils import get_possible_cpus
    return max(get_possible_cpus()) + 1


@dataclass(frozen=True)
class CpuCounters:
    """What the harvest program counted on one CPU."""

    cpu: int
    hits: int
    streamed: int
    stream_failed: int
    flight: int
    stats_full: int = 0


class SiteKey(NamedTuple):
    """What metrics count by: a probe site in a process. `topic_id` is None
    for a C topic's own probe (the site names the topic) and the entry's
    topic id for the probe that run-time topics share."""

    pid: int
    address: int
    topic_id: int | None


def struct_format(ctype: Any) -> str:
    """A `struct` format for a ctypes Structure, flattened in field order,
    with the padding its offsets imply: the compiled layout decides, so the
    format cannot drift from the C header.

    >>> class Pair(ctypes.Structure):
    ...     _fields_ = [("a", ctypes.c_uint8), ("b", ctypes.c_uint32)]
    >>> struct_format(Pair)
    'B3xI'
    """
    return "".join(code for code, _ in _layout(ctype, ""))


def struct_fields(ctype: Any) -> list[str]:
    """The names of the values `struct_format(ctype)` unpacks, in order:
    nested fields dotted, array elements indexed.

    >>> class Pair(ctypes.Structure):
    ...     _fields_ = [("a", ctypes.c_uint8), ("b", ctypes.c_uint32 * 2)]
    >>> struct_fields(Pair)
    ['a', 'b[0]', 'b[1]']
    """
    return [name for _, name in _layout(ctype, "") if name]


def _layout(ctype: Any, prefix: str) -> list[tuple[str, str]]:
    """(format code, value name or "" for padding) for a Structure."""
    parts: list[tuple[str, str]] = []
    position = 0
    for name, field_type, *_ in ctype._fields_:
        offset = getattr(ctype, name).offset
        if offset > position:
            parts.append((f"{offset - position}x", ""))
        parts.extend(_field_layout(field_type, prefix + name))
        position = offset + ctypes.sizeof(field_type)
    if ctypes.sizeof(ctype) > position:
        parts.append((f"{ctypes.sizeof(ctype) - position}x", ""))
    return parts


def _field_layout(field_type: Any, name: str) -> list[tuple[str, str]]:
    if issubclass(field_type, ctypes.Array):
        element = field_type._type_
        if element in (ctypes.c_char, ctypes.c_byte, ctypes.c_ubyte):
            return [(f"{field_type._length_}s", name)]
        return [part for index in range(field_type._length_)
                for part in _field_layout(element, f"{name}[{index}]")]
    if issubclass(field_type, ctypes.Structure):
        return _layout(field_type, name + ".")
    code = getattr(field_type, "_type_", None)
    if not isinstance(code, str) or struct.calcsize(code) != ctypes.sizeof(field_type):
        raise TypeError(f"no struct format for {field_type}")
    return [({"l": "q", "L": "Q"}.get(code, code), name)]


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
        bcc = require_bpf()
        if not (PROBES_INCLUDE / "recorder" / "entry.h").exists():
            raise TracerError(f"probe contract header missing in {PROBES_INCLUDE}")
        if string_max <= 0 or string_max % 8:
            raise TracerError("string size must be a positive multiple of 8")
        self.cpus = possible_cpus()
        cflags = [
            f"-I{PROBES_INCLUDE}",
            f"-I{BPF_DIR}",
            f"-DFLIGHT_ENTRIES={flight_entries}",
            f"-DHARVEST_STRING_MAX={string_max}",
            f"-DHARVEST_CPUS={self.cpus}",
        ]
        if pin_dir is not None:
            cflags.append(f'-DFLIGHT_PIN_DIR="{pin_dir}"')
        self.flight_entries = flight_entries if flight else 0
        for wanted, switch in ((stream, "HARVEST_STREAM"), (flight, "HARVEST_FLIGHT"),
                               (metrics, "HARVEST_METRICS")):
            if wanted:
                cflags.append(f"-D{switch}")
        try:
            self.bpf = bcc.BPF(src_file=str(BPF_DIR / "harvest.c").encode(),
                               cflags=cflags)
            self.program_fd: int = register_bcc_program(
                self.bpf, self.bpf.load_func(b"harvest", bcc.BPF.KPROBE))
            self.shared_program_fd: int = register_bcc_program(
                self.bpf, self.bpf.load_func(b"harvest_shared", bcc.BPF.KPROBE))
        except Exception as error:
            headers = Path(f"/lib/modules/{os.uname().release}/build")
            if not headers.exists():
                raise TracerError(
                    f"kernel headers missing ({headers}): run "
                    "`sudo vagrant/provision.sh`"
                ) from None
            raise TracerError(f"cannot load the BPF harvest program: {error}") from None
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
            self._stats = mmap.mmap(table.map_fd,
                                    _round_up(self._stats_length, mmap.PAGESIZE),
                                    mmap.MAP_SHARED, mmap.PROT_READ)

    def program_fd_for(self, probe_name: str) -> int:
        """The program to attach at a `recorder:<probe_name>` site."""
        return self.shared_program_fd if probe_name == SHARED_PROBE else self.program_fd

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
        table = self.bpf[b"counters"]
        per_counter = [list(table[ctypes.c_int(index)])
                       for index in range(len(COUNTER_NAMES))]
        return [
            CpuCounters(cpu, *(values[cpu] for values in per_counter))
            for cpu in range(len(per_counter[0]))
        ]

    def flight_records(self) -> list[tuple[int, Any]]:
        """(cpu, record) of every filled slot of the kernel flight ring,
        copied out, in no particular order."""
        if not self.flight_entries:
            return []
        table = self.bpf[b"flight"]
        found = []
        for slot in range(self.flight_entries):
            for cpu, record in enumerate(table[ctypes.c_int(slot)]):
                if record.pid:      # a copy: bcc read the slot into it
                    found.append((cpu, record))
        return found

    def site_counts(self) -> dict[SiteKey, int]:
        """Hits per (pid, probe address, topic id), summed over CPUs, from
        the mmapped stats table: one read, no system call per entry."""
        if self._stats is None:
            return {}
        counts: dict[SiteKey, int] = {}
        layout = "<" + struct_format(self._site_type)
        table = self._stats[:self._stats_length]
        for address, pid, topic_id, count in struct.iter_unpack(layout, table):
            if address and count:
                key = SiteKey(pid, address, None if topic_id == NO_TOPIC else topic_id)
                counts[key] = counts.get(key, 0) + count
        return counts

    def topic_counts(self) -> dict[SiteKey, int]:
        """Records counted per site; see `site_counts` (a C topic is named
        by its probe's address, a run-time topic by its id)."""
        return self.site_counts()

    def close(self) -> None:
        """Unload the programs and maps (detach first)."""
        if self._stats is not None:
            self._stats.close()
            self._stats = None
        forget_bcc_program(self.program_fd)
        forget_bcc_program(self.shared_program_fd)
        self.bpf.cleanup()


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit
