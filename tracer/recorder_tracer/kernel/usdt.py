"""The USDT program (kernel/bpf/usdt.c): loaded, its sites table, counters.

One BPF program serves every probe: it is attached per PID to each
selected site with the probe's semaphore as reference counter
(kernel/arm.py), and decodes the arguments from the site's specs, which
session/usdt.py lowers from the note's argument string
(decode/usdt_args.py) and stores under (pid, runtime address), the address
PT_REGS_IP shows at the hit: load bias + the note's address.

Strings: BPF copies, bounded, the string each pointer-sized argument points
to (USDT_STRING_MAX bytes), at the hit, so a short-lived process or a
freed buffer still shows its text.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from recorder_tracer.abi import USDT_COUNTERS, USDT_SITE_UNKNOWN
from recorder_tracer.errors import TracerError
from recorder_tracer.kernel.loader import (
    load_function,
    load_program,
    read_counters,
    unload,
)

COUNTER_NAMES = USDT_COUNTERS
__all__ = ["COUNTER_NAMES", "USDT_SITE_UNKNOWN", "UsdtCounters", "UsdtProgram"]


@dataclass(frozen=True)
class UsdtCounters:
    """What usdt.c counted on one CPU: hits = streamed + stream_failed."""

    cpu: int
    hits: int
    streamed: int
    stream_failed: int
    unknown_site: int


class UsdtProgram:
    """The loaded kernel/bpf/usdt.c: its fd, event type and maps.

    It offers what `stream.Stream` reads of a Harvester (`bpf` with a
    per-CPU `stream`, `record_type`, `counters()`), so the loss accounting
    is the same code.
    """

    def __init__(self, string_max: int = 128, max_sites: int = 16384) -> None:
        if string_max <= 0 or string_max % 8:
            raise TracerError("string size must be a positive multiple of 8")
        self.bpf = load_program("usdt.c", [f"-DUSDT_STRING_MAX={string_max}",
                                           f"-DUSDT_MAX_SITES={max_sites}"],
                                "USDT", contract=False)
        self.program_fd: int = load_function(self.bpf, b"usdt_hit")
        self.record_type: type[ctypes.Structure] = self.bpf[b"scratch"].sLeaf
        self.sites = self.bpf[b"sites"]

    def close(self) -> None:
        """Unload the program and its maps (detach first)."""
        unload(self.bpf, (self.program_fd,))

    def counters(self) -> list[UsdtCounters]:
        """Per-CPU counters (hits, streamed, refused, unknown sites)."""
        return [UsdtCounters(cpu, **values) for cpu, values
                in enumerate(read_counters(self.bpf, COUNTER_NAMES))]
