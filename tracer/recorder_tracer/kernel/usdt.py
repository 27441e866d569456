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

Under --comm and --all (WideSites, below), sites are attached by file, for
every process. Attaching per PID misses what a process does before it is armed, and a
server's forked workers (a PostgreSQL backend per connection) are never
exec'd, so no exec event names them. So under --comm and --all each
selected probe site is attached once, by file, for every process (pid -1):
the kernel raises its semaphore in every process that maps the file, now
and later, as bpftrace does; usdt.c then keeps the hits of the processes the
selection names (by comm, or all of them) and drops the rest before it
counts them.

Argument specs are stored per (pid, runtime address) for the processes we
have seen, and under pid 0 for their addresses, which a forked child keeps.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from recorder_tracer.abi import USDT_COUNTERS, USDT_SITE_UNKNOWN
from recorder_tracer.errors import TracerError
from recorder_tracer.kernel import arm
from recorder_tracer.kernel.loader import (
    load_function,
    load_program,
    read_counters,
    unload,
)
from recorder_tracer.target import notes
from recorder_tracer.target.procs import ProcessGone, process_comm

COUNTER_NAMES = USDT_COUNTERS
__all__ = ["COUNTER_NAMES", "USDT_SITE_UNKNOWN", "UsdtCounters", "UsdtProgram",
           "WideSites"]


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


# session/usdt.py's ProbeSite and TracedProcess, passed in: this module is
# below the session and must not import it back.
ProbeSite = Any
TracedProcess = Any


class UsdtTracer(Protocol):
    """What WideSites uses of session/usdt.py's UsdtSource."""

    program: UsdtProgram
    selectors: list[Any]
    processes: dict[int, Any]

    def _load_specs(self, process: Any) -> None: ...


class WideSites:
    """The system-wide attachments of one UsdtSource (`tracer`); `site_of`
    makes a ProbeSite (probe, path, selector), `new_process` a
    TracedProcess (pid, comm)."""

    def __init__(self, tracer: UsdtTracer, comms: list[str],
                 all_processes: bool,
                 site_of: Callable[[notes.UsdtProbe, str, Any], ProbeSite],
                 new_process: Callable[[int, str], TracedProcess]) -> None:
        self.site_of = site_of
        self.new_process = new_process
        self.tracer = tracer
        self.attachments: list[arm.Attachment] = []
        self.by_address: dict[int, ProbeSite] = {}      # for unseen processes
        self._attached: set[tuple[int, int, int]] = set()  # dev, ino, offset
        bpf = tracer.program.bpf
        config = bpf[b"filter"].Leaf()
        config.on = 0 if all_processes else 1
        bpf[b"filter"][ctypes.c_int(0)] = config
        table = bpf[b"filter_comms"]
        for comm in comms:
            key = table.Key()
            key.comm = comm.encode()[:15]
            table[key] = ctypes.c_uint8(1)
        for selector in tracer.selectors:
            if selector.path is not None:
                self.attach_file(selector.path)

    def allow(self, pid: int) -> None:
        """Report `pid`'s hits whatever its comm (-p beside --comm)."""
        self.tracer.program.bpf[b"filter_pids"][ctypes.c_uint32(pid)] = \
            ctypes.c_uint8(1)

    def attach_file(self, path: str, mapped: notes.MappedFile | None = None,
                    pid: int = 0) -> list[ProbeSite]:
        """Attach every selected probe of the file at `path`, for every
        process (once per file); returns its selected sites. A file that
        process `pid` maps (`mapped`) is read and attached only as that
        mapped inode, whatever its path names meanwhile."""
        try:
            probes = (notes.probes_in_file(path) if mapped is None
                      else notes.probes_in_mapped(mapped))
        except (OSError, notes.NotesError):
            return []
        identity = probes[0].identity if probes else None
        sites = [self.site_of(probe, path, selector)
                 for selector in self.tracer.selectors
                 if selector.path is None or _names(selector.path, identity)
                 for probe in probes if selector.matches(probe)]
        for site in sites:
            key = (site.probe.device, site.probe.inode, site.probe.file_offset)
            if key in self._attached:
                continue
            try:
                self.attachments.append(arm.attach_uprobe(
                    self.tracer.program.program_fd, site.probe.path,
                    site.probe.file_offset, -1, site.probe.semaphore_offset,
                    site.probe.identity, mapped_by=pid))
            except arm.ArmError as error:
                if mapped is not None:
                    continue    # it was replaced or unmapped: not this file
                raise TracerError(str(error)) from None
            self._attached.add(key)
        return sites

    def learn(self, pid: int) -> TracedProcess | None:
        """Note the sites of a process the selection names, attaching the
        files it maps that have selected probes; None if it has none."""
        if pid in self.tracer.processes:
            return self.tracer.processes[pid]
        try:
            mapped = notes.mapped_files(pid, executable_only=True)
            comm = process_comm(pid)
        except (notes.ProcessGone, ProcessGone, PermissionError, OSError):
            return None
        process = self.new_process(pid, comm)
        for file in mapped:
            process.sites.extend(self.attach_file(file.open_path, file, pid))
        if not process.sites:
            return None
        self.tracer.processes[pid] = process
        self.tracer._load_specs(process)
        sites = self.tracer.program.sites
        for address, site in process.by_address.items():
            if address in self.by_address:
                continue
            self.by_address[address] = site
            sites[sites.Key(pid=0, ip=address)] = sites[sites.Key(pid=pid, ip=address)]
        return process

    def detach(self) -> None:
        for attachment in self.attachments:
            arm.detach(attachment)
        self.attachments.clear()
        self._attached.clear()


def _names(path: str, identity: tuple[int, int] | None) -> bool:
    """Whether `path` names the file (device, inode) `identity`."""
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return (stat.st_dev, stat.st_ino) == identity
