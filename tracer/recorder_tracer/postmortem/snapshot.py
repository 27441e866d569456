"""Crash snapshots: the last records of a process that dies by a signal.

`SnapshotWatcher` loads kernel/bpf/snapshot.c, which runs at every signal
delivery and, for a fatal one, copies the victim's last N in-process
records into a ring buffer from the victim's own context (see that file).
The watcher tells BPF where each process's registry is (a scan at start,
then each EXEC from the proc connector, retried while the dynamic loader
maps the core, and a rescan every few seconds for cores loaded later), and
turns each capture into a snapshot file (postmortem/snapshot_file.py): records
merged by time, the last N kept, formatted from the process's memory or,
once it has gone, its files. The exit status is added when the proc
connector reports it.

    watcher = SnapshotWatcher(SnapshotOptions("/tmp/snaps", records=256))
    watcher.start()
    while running:
        watcher.poll(timeout_ms=100)     # returns the files written
    watcher.close()

`take_snapshot(pid)` (postmortem/build.py) makes the same file for a live
process, on demand, without a signal.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recorder_tracer.abi import (
    ENTRY,
    SNAPSHOT_COUNTERS,
    SNAPSHOT_END,
    SNAPSHOT_ENTRY,
    SNAPSHOT_FAULT,
    SNAPSHOT_GROUP_EXIT,
)
from recorder_tracer.decode.entry import RawEntry
from recorder_tracer.errors import TracerError
from recorder_tracer.kernel.btf import member_offset
from recorder_tracer.kernel.coverage import exit_tracepoint
from recorder_tracer.kernel.loader import (
    load_program,
    possible_cpus,
    read_counters,
    struct_format,
)
from recorder_tracer.kernel.pins import PinDir
from recorder_tracer.postmortem.backoff import RegistryMisses
from recorder_tracer.postmortem.build import (
    KnownProcess,
    SnapshotOptions,
    build_snapshot,
    load_remembered,
    remember,
    share_dir_of,
)
from recorder_tracer.postmortem.captures import Capture, Captures
from recorder_tracer.postmortem.rescan import MappedScan
from recorder_tracer.postmortem.snapshot_file import (
    file_name,
    signal_name,
    write_snapshot,
)
from recorder_tracer.selftrace import SESSION
from recorder_tracer.target import procs
from recorder_tracer.target.memory import ProcessImage
from recorder_tracer.target.rings import last_entries

TP_PREFIX = "tp:"           # pins of the raw tracepoint links
COUNTER_NAMES = SNAPSHOT_COUNTERS
EXEC_RETRIES_S = (0.0, 0.01, 0.05, 0.2, 1.0, 3.0)   # until the core is mapped
RESCAN_INTERVAL_S = 2.0
EXIT_MEMORY = 4096          # exits remembered for captures still to come
FAULT_SIGNALS = {4, 5, 7, 8, 11, 31}    # ILL TRAP BUS FPE SEGV SYS: si_addr

Reporter = Callable[[str], None]


@dataclass
class Written:
    """A snapshot file written, kept to add the exit status."""

    path: Path
    snapshot: dict[str, Any]


@dataclass
class WatcherCounts:
    """What the watcher did: files written, and those it could not write."""

    written: int = 0
    failed: int = 0
    incomplete: int = 0     # captures whose entries or END the ring refused


class SnapshotWatcher:
    """Capture fatal signals of every process with a recorder core."""

    def __init__(self, options: SnapshotOptions | None = None,
                 report: Reporter = lambda message: None) -> None:
        self.options = options or SnapshotOptions()
        if self.options.records <= 0:
            raise TracerError("snapshot records must be positive")
        self.report = report
        self.counts = WatcherCounts()
        self.known: dict[int, KnownProcess] = {}
        self._captures = Captures()     # FAULT read, END not yet
        self._written: dict[int, Written] = {}
        self._exits: dict[int, dict[str, Any]] = {}
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: dict[int, int] = {}      # pid -> next retry index
        self._retry_at: dict[int, float] = {}
        self._next_rescan = 0.0
        self._misses = RegistryMisses()     # mapped a core, had no registry
        self._scan = MappedScan()           # mapped none when last read
        self._new_files: list[Path] = []
        self._follower: Any = None
        self.bpf: Any = None
        self.pins: PinDir | None = None
        # Processes a previous controller knew (pinned mode): to format
        # what it captured while no controller ran.
        self._remembered: dict[int, KnownProcess] = {}

    # -- setting up -----------------------------------------------------------

    def start(self) -> None:
        """Load and attach the capture program, follow processes, and tell
        BPF about every process that maps a recorder core now."""
        previous: list[Path] = []
        if self.options.pin_dir is not None:
            PinDir(self.options.pin_dir)
            self.pins = PinDir(Path(self.options.pin_dir) / "snapshot")
            previous = sorted(self.pins.path.glob(f"{TP_PREFIX}*"))
            self._remembered = load_remembered(self._memory_dir)
        cflags = [f"-DSNAPSHOT_RECORDS={self.options.records}",
                  f"-DSNAPSHOT_RING_PAGES={self.options.ring_pages}",
                  f"-DSNAPSHOT_CPUS={min(possible_cpus(), 64)}",
                  *kernel_offsets()]
        if self.pins is not None:
            cflags.append(f'-DSNAPSHOT_PIN_DIR="{self.pins.path}"')
        if exit_tracepoint():
            cflags.append("-DSNAPSHOT_EXIT_TRACEPOINT")
        self.bpf = load_program("snapshot.c", cflags, "snapshot")
        try:
            import bcc
            more = self.bpf.load_func(b"walk_more", bcc.BPF.RAW_TRACEPOINT)
            self.bpf[b"walk_programs"][ctypes.c_int(0)] = ctypes.c_int(more.fd)
        except Exception as error:
            raise TracerError(
                f"cannot load the BPF snapshot program: {error}") from None
        self._formats = {
            kind: "<" + struct_format(self.bpf[name].Leaf)
            for kind, name in ((SNAPSHOT_FAULT, b"layout_fault"),
                               (SNAPSHOT_ENTRY, b"layout_entry"),
                               (SNAPSHOT_END, b"layout_end"))}
        assert struct.calcsize(self._formats[SNAPSHOT_ENTRY]) == 24 + ENTRY.size
        if self.pins is not None:
            # Ours attached: the previous controller's links can go (both
            # programs share `captured`, so nothing was captured twice).
            for path in previous:
                path.unlink(missing_ok=True)
            for tracepoint, fd in self.bpf.raw_tracepoint_fds.items():
                self.pins.pin_object(fd, TP_PREFIX + tracepoint.decode())
        self.bpf[b"snapshots"].open_ring_buffer(self._on_message)
        self._registries = self.bpf[b"registries"]
        if self._remembered:
            self.bpf.ring_buffer_consume()  # captures made while none ran
        follower = procs.ProcessFollower(self._events.put)
        try:
            follower.start()
            self._follower = follower
        except (OSError, TimeoutError) as error:
            self.report(f"snapshots: no process events ({error}); "
                        f"rescanning every {RESCAN_INTERVAL_S:g} s")
        self.rescan()
        SESSION.record("snapshot watcher: %d processes, N=%d", len(self.known),
                       self.options.records)

    def register(self, pid: int) -> bool:
        """Tell BPF where `pid`'s registry is; False without a core."""
        if pid == os.getpid():
            return False        # our own death: nobody left to write it
        try:
            image = ProcessImage.of(pid)
            registry = image.find_registry()
            if registry is None:
                image.close()
                return False
            exe = os.readlink(f"/proc/{pid}/exe")
            topics = {topic.id: topic.name for topic in image.topics()}
        except OSError:
            return False
        self._registries[ctypes.c_uint32(pid)] = ctypes.c_uint64(registry)
        self._misses.forget(pid)
        old = self.known.pop(pid, None)
        if old is not None:
            old.image.close()
        self.known[pid] = KnownProcess(pid, image, registry, exe, topics,
                                       share_dir_of(pid), procs.start_time(pid))
        if self.pins is not None:
            remember(self._memory_dir, self.known[pid])
        return True

    @property
    def _memory_dir(self) -> Path:
        return Path(self.options.directory) / ".processes"

    def forget(self, pid: int) -> None:
        """Stop watching `pid` (it exited, or exec'd another program)."""
        known = self.known.pop(pid, None)
        if known is not None:
            known.image.close()
        self._misses.forget(pid)
        self._scan.forget(pid)
        if self.pins is not None:
            (self._memory_dir / f"{pid}.json").unlink(missing_ok=True)
        with contextlib.suppress(KeyError):
            del self._registries[ctypes.c_uint32(pid)]

    def rescan(self, now: float | None = None) -> None:
        """Register the processes that map a core and are not known yet
        (a core loaded after exec, by dlopen or a Python import); one found
        without a registry is looked at less and less often (backoff.py)."""
        now = time.monotonic() if now is None else now
        self._next_rescan = now + RESCAN_INTERVAL_S
        for pid in self._scan.recorder_processes(
                lambda pid: pid not in self.known and self._misses.due(pid, now), now):
            if not self.register(pid):
                self._misses.missed(pid, now)

    # -- running --------------------------------------------------------------

    def report_written(self, report: Callable[[str], None]) -> None:
        """Say which snapshots were written since the last poll."""
        for path in self.poll(timeout_ms=0):
            report(f"snapshot written: {path}")

    def poll(self, timeout_ms: int = 100) -> list[Path]:
        """Read captures (waiting up to `timeout_ms`), write their files,
        handle process events; returns the files written or rewritten."""
        self.bpf.ring_buffer_poll(timeout_ms)
        # The ring's wakeup comes by irq_work: late where the capture ran
        # with interrupts off (6.1's signal_deliver walk), after the exit
        # event that may end a session. Read what is there regardless.
        self.bpf.ring_buffer_consume()
        for capture, walk in self._captures.expired():  # their END was lost
            self._finish(capture, walk)
        self._handle_events()
        now = time.monotonic()
        for pid in [pid for pid, when in self._retry_at.items() if when <= now]:
            self._retry_registration(pid)
        if now >= self._next_rescan:
            self.rescan()
        written, self._new_files = self._new_files, []
        return written

    def _handle_events(self) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            kind = event.kind
            if kind is procs.ProcEventKind.EXEC:
                self.forget(event.pid)
                self._pending[event.pid] = 0
                self._retry_at[event.pid] = time.monotonic()
            elif kind is procs.ProcEventKind.EXIT:
                self._on_exit(event)
            elif kind is procs.ProcEventKind.OVERRUN:
                self._next_rescan = 0.0

    def _retry_registration(self, pid: int) -> None:
        attempt = self._pending.pop(pid, 0)
        self._retry_at.pop(pid, None)
        if not procs.process_exists(pid) or self.register(pid):
            return
        if attempt + 1 < len(EXEC_RETRIES_S):
            self._pending[pid] = attempt + 1
            self._retry_at[pid] = time.monotonic() + EXEC_RETRIES_S[attempt + 1]

    def _on_exit(self, event: Any) -> None:
        status = {"code": event.exit_code, "signal": event.signal,
                  "signal_name": signal_name(event.signal),
                  "core_dumped": event.core_dumped,
                  "description": event.describe(), "time_ns": event.timestamp}
        self._pending.pop(event.pid, None)
        self._retry_at.pop(event.pid, None)
        written = self._written.pop(event.pid, None)
        if written is not None:
            written.snapshot["exit"] = status
            self._write(written.path.name, written.snapshot, event.pid)
        elif event.pid in self.known or event.pid in self._captures:
            self._exits[event.pid] = status
            while len(self._exits) > EXIT_MEMORY:
                self._exits.pop(next(iter(self._exits)))
        if event.pid not in self._captures:
            self.forget(event.pid)

    def _on_message(self, _context: Any, data: Any, size: int) -> None:
        raw = ctypes.string_at(data, size)
        kind = int.from_bytes(raw[:4], "little")
        fmt = self._formats.get(kind)
        if fmt is None:
            return
        for capture, walk in self._captures.take(kind, struct.unpack_from(fmt, raw)):
            self._finish(capture, walk)

    def _finish(self, capture: Capture, walk: dict[str, Any]) -> None:
        """Write the snapshot file of a complete capture."""
        pid = capture.pid
        known = self.known.get(pid) or self._remembered.pop(pid, None)
        if known is None:       # a forked child BPF knew through its parent
            self.register(pid)
            known = self.known.get(pid)
        entries = last_entries([sorted(capture.entries, key=_order)],
                               self.options.records)
        if walk["lost"] or walk.get("end_lost"):
            self.counts.incomplete += 1
        if walk.get("end_lost"):
            self.report(f"snapshots: the capture of pid {pid} never ended (the "
                        f"ring was full?): its {len(capture.entries)} entries "
                        "are written as they are")
        snapshot = build_snapshot(
            pid, capture.comm, known, entries, source="signal",
            records_wanted=self.options.records, time_ns=capture.time_ns,
            fault={"tid": capture.tid, "signal": capture.signal,
                   "signal_name": signal_name(capture.signal),
                   "code": capture.code,
                   "address": hex(capture.address)
                   if capture.code > 0 and capture.signal in FAULT_SIGNALS else None,
                   "group_exit": bool(capture.flags & SNAPSHOT_GROUP_EXIT)},
            capture={**walk, **{f"skipped_{k}": v for k, v in capture.skipped.items()}})
        exit_status = self._exits.pop(pid, None)
        if exit_status is not None:
            snapshot["exit"] = exit_status
        name = file_name(pid, capture.comm, capture.time_ns)
        path = self._write(name, snapshot, pid)
        if path is not None and exit_status is None:
            self._written[pid] = Written(path, snapshot)
        if exit_status is not None or not procs.process_exists(pid):
            self.forget(pid)

    def _write(self, name: str, snapshot: dict[str, Any], pid: int) -> Path | None:
        try:
            path = write_snapshot(self.options.directory, name, snapshot)
        except (OSError, TracerError, ValueError) as error:
            # Counted whatever the cause: a directory someone else owns, a
            # full disk, a value JSON cannot hold.
            self.counts.failed += 1
            reason = getattr(error, "strerror", None) or error
            self.report(f"recorder: cannot write snapshot of pid {pid} in "
                        f"{self.options.directory}: {reason} "
                        f"({self.counts.failed} not written)")
            return None
        self.counts.written += 1
        self._new_files.append(path)
        SESSION.record("snapshot of pid %d written", pid)
        return path

    def counters(self) -> dict[str, int]:
        """The BPF program's counters, summed over CPUs."""
        per_cpu = read_counters(self.bpf, COUNTER_NAMES)
        return {name: sum(cpu[name] for cpu in per_cpu) for name in COUNTER_NAMES}

    def close(self) -> None:
        """Write what was captured, detach and unload; stop following."""
        if self.bpf is not None:    # captures still waiting for their END
            self.bpf.ring_buffer_consume()
            for capture, walk in self._captures.expired(float("inf")):
                self._finish(capture, walk)
        if self._follower is not None:
            with contextlib.suppress(Exception):
                self._follower.stop()
            self._follower = None
        for known in self.known.values():
            known.image.close()
        self.known.clear()
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
        if self.pins is not None:       # a clean end: nothing outlives us
            self.pins.clear()
            shutil.rmtree(self._memory_dir, ignore_errors=True)


def start_watcher(options: SnapshotOptions, pins: PinDir | None,
                  report: Callable[[str], None]) -> SnapshotWatcher:
    """A trace session's watcher, started: its snapshots go beside the
    session's pins unless `options` name a pin directory."""
    from dataclasses import replace
    if options.pin_dir is None and pins is not None:
        options = replace(options, pin_dir=str(pins.path))
    watcher = SnapshotWatcher(options, report)
    watcher.start()
    return watcher


def kernel_offsets() -> list[str]:
    """-D flags: the kernel struct members snapshot.c reads, from BTF."""
    return [f"-D{name}={member_offset(struct_name, member)}"
            for name, struct_name, member in (
                ("TASK_PID_OFFSET", "task_struct", "pid"),
                ("TASK_TGID_OFFSET", "task_struct", "tgid"),
                ("TASK_SIGNAL_OFFSET", "task_struct", "signal"),
                ("SIGNAL_EXIT_CODE_OFFSET", "signal_struct", "group_exit_code"))]


def _order(entry: RawEntry) -> tuple[int, int, int]:
    return entry.timestamp, entry.shard, entry.sequence
