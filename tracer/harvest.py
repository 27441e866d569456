"""Compile, load and read the BPF harvest program (tracer/bpf/harvest.c).

One Harvester is one loaded program and its maps; tracer/arm.py attaches it
to probe sites, tracer/stream.py drains its stream.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recorder_tracer.errors import TracerError

BPF_DIR = Path(__file__).resolve().parent / "bpf"
PROBES_INCLUDE = Path(__file__).resolve().parent.parent / "probes" / "include"
COUNTER_NAMES = ("hits", "streamed", "stream_failed", "flight")


def require_bpf() -> Any:
    """Import bcc, or fail with the fix; also checks for root."""
    if os.geteuid() != 0:
        raise TracerError("recorder must run as root (BPF and uprobes need it)")
    try:
        import bcc
    except ImportError:
        raise TracerError(
            "bcc is not available: run `sudo vagrant/provision.sh` "
            "(installs Debian's python3-bpfcc)"
        ) from None
    return bcc


@dataclass(frozen=True)
class CpuCounters:
    """What the harvest program counted on one CPU."""

    cpu: int
    hits: int
    streamed: int
    stream_failed: int
    flight: int


class Harvester:
    """The loaded harvest program: its fd, record type and maps."""

    def __init__(
        self,
        stream: bool = True,
        flight: bool = True,
        flight_entries: int = 1024,
        string_max: int = 64,
    ) -> None:
        bcc = require_bpf()
        if not (PROBES_INCLUDE / "recorder" / "entry.h").exists():
            raise TracerError(f"probe contract header missing in {PROBES_INCLUDE}")
        cflags = [
            f"-I{PROBES_INCLUDE}",
            f"-I{BPF_DIR}",
            f"-DFLIGHT_ENTRIES={flight_entries}",
            f"-DHARVEST_STRING_MAX={string_max}",
        ]
        if stream:
            cflags.append("-DHARVEST_STREAM")
        if flight:
            cflags.append("-DHARVEST_FLIGHT")
        try:
            self.bpf = bcc.BPF(src_file=str(BPF_DIR / "harvest.c").encode(),
                               cflags=cflags)
        except Exception as error:
            headers = Path(f"/lib/modules/{os.uname().release}/build")
            if not headers.exists():
                raise TracerError(
                    f"kernel headers missing ({headers}): run "
                    "`sudo vagrant/provision.sh`"
                ) from None
            raise TracerError(f"cannot load the BPF harvest program: {error}") from None
        self.program_fd: int = self.bpf.load_func(b"harvest", bcc.BPF.KPROBE).fd
        # The record layout as compiled, from bcc's table description.
        self.record_type: type[ctypes.Structure] = self.bpf[b"scratch"].sLeaf
        self.has_stream = stream

    def decode(self, data: int) -> Any:
        """The harvest_record at a raw perf-buffer pointer."""
        return ctypes.cast(data, ctypes.POINTER(self.record_type)).contents

    def counters(self) -> list[CpuCounters]:
        """Per-CPU counters (hits, streamed, refused, flight)."""
        table = self.bpf[b"counters"]
        per_counter = [list(table[ctypes.c_int(index)]) for index in range(4)]
        return [
            CpuCounters(cpu, *(per_counter[index][cpu] for index in range(4)))
            for cpu in range(len(per_counter[0]))
        ]

    def topic_counts(self) -> dict[tuple[int, int], int]:
        """Records seen per (pid, topic id), from the kernel aggregation map."""
        return {
            (key.pid, key.topic_id): value.count
            for key, value in self.bpf[b"stats"].items()
        }

    def close(self) -> None:
        self.bpf.cleanup()
