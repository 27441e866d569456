"""A trace session: arm topics in processes, follow new ones, emit records.

    session = TraceSession(options, sink)
    session.run()            # until the duration, Ctrl-C, or -c's exit
    session.summaries()      # per-CPU produced / received / lost

Records leave in timestamp order across processes and CPUs: they wait in a
heap for a short reordering window (per-CPU streams are each in order, but
are polled one after another).
"""

from __future__ import annotations

import heapq
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from recorder_tracer import arm, notes
from recorder_tracer.errors import TracerError
from recorder_tracer.harvest import Harvester
from recorder_tracer.memory import ProcessImage, Topic, process_exists
from recorder_tracer.record import Record
from recorder_tracer.render import format_message
from recorder_tracer.spec import TopicSpec
from recorder_tracer.stream import CpuSummary, Stream

REORDER_WINDOW_NS = 150_000_000
HARVEST_ENTRY_UNREADABLE = 0x1      # tracer/bpf/harvest.h
ARG_INT, ARG_DOUBLE, ARG_STRING, ARG_POINTER = range(4)

Sink = Callable[[Record], None]
Reporter = Callable[[str], None]


@dataclass
class TraceOptions:
    """What to trace; see `recorder trace --help`."""

    pids: list[int] = field(default_factory=list)
    comms: list[str] = field(default_factory=list)
    all_processes: bool = False
    command: list[str] | None = None
    spec: TopicSpec = field(default_factory=lambda: TopicSpec(()))
    duration: float | None = None
    flight_entries: int = 1024
    pages_per_cpu: int = 256
    command_stderr: int | None = None   # fd for -c's stderr (default: ours)


@dataclass
class ArmedProcess:
    """One traced process: what we attached and how to read its records."""

    pid: int
    comm: str
    image: ProcessImage
    topics: dict[int, Topic]
    attachments: list[arm.Attachment]
    armed_topics: set[str]
    probes: list[Any] = field(default_factory=list)
    site_topics: dict[int, str] = field(default_factory=dict)

    def topic_at(self, probe_address: int) -> str | None:
        """The topic whose probe fired at `probe_address` (a runtime address):
        the site whose link-time address is page-congruent with it. Also maps
        that file into the image, so a process that already exited can still
        be read from its files."""
        if probe_address in self.site_topics:
            return self.site_topics[probe_address]
        for probe in self.probes:
            base = probe_address - probe.address
            if base >= 0 and base % 4096 == 0:
                self.image.add_file(probe.path, base)
                self.site_topics[probe_address] = probe.name
                return probe.name
        return None


def monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def process_comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return "?"


class TraceSession:
    """Arms, streams and reorders; the CLI renders what `sink` receives."""

    def __init__(self, options: TraceOptions, sink: Sink,
                 report: Reporter = lambda message: None) -> None:
        self.options = options
        self.sink = sink
        self.report = report
        self.processes: dict[int, ArmedProcess] = {}
        self.exited: dict[int, ArmedProcess] = {}
        self._pending: list[tuple[int, int, int, Record]] = []
        self._sequence = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._child: int | None = None
        self._child_status: int | None = None
        self._watcher: Any = None
        self.seen_topics: set[str] = set()
        self.harvester = Harvester(stream=True, flight=True,
                                   flight_entries=options.flight_entries)
        self.stream = Stream(self.harvester, self._on_record,
                             pages_per_cpu=options.pages_per_cpu)

    # -- arming ---------------------------------------------------------------

    def arm(self, pid: int, required: bool = True) -> ArmedProcess | None:
        """Arm the selected topics of `pid`; None if it has no recorder core
        (an error when `required`)."""
        if pid in self.processes:
            return self.processes[pid]
        try:
            image = ProcessImage.of(pid)
            probes = [probe for probe in notes.probes_in_process(pid)
                      if probe.provider == "recorder"]
        except (FileNotFoundError, ProcessLookupError, notes.ProcessGone):
            if required:
                raise TracerError(f"process {pid} does not exist") from None
            return None
        except OSError as error:
            if required:
                raise TracerError(f"cannot read process {pid}: "
                                  f"{error.strerror}") from None
            return None
        if not probes:
            if required:
                raise TracerError(f"process {pid} ({process_comm(pid)}) has no "
                                  "recorder probes (no recorder core mapped)")
            return None
        process = ArmedProcess(pid, process_comm(pid), image,
                               {topic.id: topic for topic in image.topics()},
                               [], set())
        self.seen_topics.update(probe.name for probe in probes)
        self._attach(process, probes)
        self.processes[pid] = process
        return process

    def _attach(self, process: ArmedProcess, probes: list[Any]) -> None:
        seen = {(a.path, a.file_offset) for a in process.attachments}
        for probe in probes:
            if not self.options.spec.armed(probe.name):
                continue
            site = (probe.path, probe.file_offset)
            if site in seen:
                continue
            seen.add(site)
            try:
                process.attachments.append(arm.attach_uprobe(
                    self.harvester.program_fd, probe.path, probe.file_offset,
                    process.pid, probe.semaphore_offset))
                process.armed_topics.add(probe.name)
                process.probes.append(probe)
            except arm.ArmError as error:
                if not process_exists(process.pid):
                    self.report(f"process {process.pid} exited while arming")
                    return
                raise TracerError(str(error)) from None

    def disarm(self, pid: int) -> None:
        """Detach every probe of `pid`; its semaphores drop back to zero."""
        process = self.processes.pop(pid, None)
        if process is None:
            return
        for attachment in process.attachments:
            arm.detach(attachment)
        process.attachments.clear()
        self.exited[pid] = process

    def start_command(self, command: list[str]) -> int:
        """Fork `command`, arm its executable's probes before it runs, then
        let it exec: it is traced from its first record."""
        path = shutil.which(command[0])
        if path is None:
            raise TracerError(f"command not found: {command[0]}")
        probes = [probe for probe in notes.probes_in_file(path)
                  if probe.provider == "recorder"]
        self.seen_topics.update(probe.name for probe in probes)
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:    # the child waits until its probes are armed
            os.close(ready_write)
            if self.options.command_stderr is not None:
                os.dup2(self.options.command_stderr, 2)
            os.read(ready_read, 1)
            try:
                os.execv(path, command)
            finally:
                os._exit(127)
        os.close(ready_read)
        self._child = pid
        process = ArmedProcess(pid, os.path.basename(path)[:15],
                               ProcessImage(pid), {}, [], set())
        # A uprobe opened for a PID follows it through exec; the kernel
        # raises the semaphores when the executable gets mapped.
        self._attach(process, probes)
        self.processes[pid] = process
        os.write(ready_write, b"g")
        os.close(ready_write)
        return pid

    def _refresh_image(self, process: ArmedProcess) -> None:
        """After exec: cache the maps and topics (and arm shared libraries)."""
        try:
            process.image = ProcessImage.of(process.pid)
            process.topics = {topic.id: topic for topic in process.image.topics()}
            process.comm = process_comm(process.pid)
            probes = [probe for probe in notes.probes_in_process(process.pid)
                      if probe.provider == "recorder"]
            self._attach(process, probes)
        except (FileNotFoundError, ProcessLookupError, notes.ProcessGone):
            pass

    # -- following processes --------------------------------------------------

    def _wants(self, pid: int) -> bool:
        if self.options.all_processes:
            return True
        return bool(self.options.comms) and process_comm(pid) in self.options.comms

    def _on_process_event(self, event: Any) -> None:
        from recorder_tracer.procs import ProcEventKind
        if event.kind is ProcEventKind.EXEC:
            self._on_exec(event.pid)
        elif event.kind is ProcEventKind.EXIT:
            self._on_exit(event.pid, event.describe())

    def _on_exec(self, pid: int) -> None:
        with self._lock:
            if pid in self.processes:
                if pid == self._child:
                    self._refresh_image(self.processes[pid])
                return
            if self._wants(pid) and self.arm(pid, required=False):
                self.report(f"tracing new process {pid} ({process_comm(pid)})")

    def _on_exit(self, pid: int, status: str) -> None:
        with self._lock:
            if pid in self.processes:
                process = self.processes[pid]
                self.report(f"process {pid} ({process.comm}) exited: {status}")
                self.disarm(pid)

    # -- records --------------------------------------------------------------

    def _on_record(self, cpu: int, raw: Any) -> None:
        record = self.decode(cpu, raw)
        self._sequence += 1
        heapq.heappush(self._pending, (record.ts, cpu, self._sequence, record))

    def decode(self, cpu: int, raw: Any) -> Record:
        """A harvest record, with its format and location read from the
        process that wrote it (or its files, once it has exited)."""
        entry = raw.entry
        pid = raw.pid
        if raw.status & HARVEST_ENTRY_UNREADABLE:
            # BPF could not copy the entry; say so, at the time of the hit.
            comm = raw.comm.decode(errors="replace")
            process = self.processes.get(pid) or self.exited.get(pid)
            topic = (process.topic_at(raw.probe_address) if process else None) or "?"
            return Record(ts=raw.harvest_ns, pid=pid, tid=0, comm=comm, topic=topic,
                          where="?", message="<entry unreadable by BPF>", args=[],
                          cpu=cpu)
        process = self.processes.get(pid) or self.exited.get(pid)
        if process is None:
            process = ArmedProcess(pid, raw.comm.decode(errors="replace"),
                                   ProcessImage(pid), {}, [], set())
            self.exited[pid] = process
        # A C topic is named by its probe; the registry names run-time ones.
        topic_name = process.topic_at(raw.probe_address)
        if topic_name is None:
            topic = process.topics.get(entry.topic_id)
            if topic is None and process_exists(pid):
                try:
                    process.image = ProcessImage.of(pid)
                    process.topics.update({t.id: t for t in process.image.topics()})
                except OSError:
                    pass
                topic = process.topics.get(entry.topic_id)
            topic_name = topic.name if topic else f"topic{entry.topic_id}"
        args: list[int | float | str | None] = []
        strings = iter(raw.strings)
        for index in range(min(entry.nargs, 12)):
            kind = (entry.arg_types >> (2 * index)) & 3
            value = entry.args[index]
            if kind == ARG_DOUBLE:
                args.append(_double(value))
            elif kind == ARG_STRING:
                captured = next(strings, None)
                if captured is None:
                    args.append(process.image.string(value))
                elif captured.length > 0:
                    args.append(bytes(captured.text)[: captured.length - 1]
                                .decode("utf-8", "replace"))
                else:
                    args.append(None)   # unreadable: rendered as such
            else:
                args.append(value - (1 << 64) if kind == ARG_INT
                            and value >= 1 << 63 else value)
        fmt = process.image.string(entry.format)
        where = process.image.string(entry.where) or "?"
        message = (format_message(fmt, args) if fmt is not None
                   else f"<unreadable format {entry.format:#x}>")
        return Record(ts=entry.timestamp, pid=pid, tid=entry.tid,
                      comm=raw.comm.decode(errors="replace"), topic=topic_name,
                      where=where, message=message, args=args, cpu=cpu)

    def _flush(self, everything: bool = False) -> None:
        horizon = monotonic_ns() - REORDER_WINDOW_NS
        while self._pending and (everything or self._pending[0][0] <= horizon):
            self.sink(heapq.heappop(self._pending)[3])

    # -- running --------------------------------------------------------------

    def start(self) -> None:
        """Arm the chosen processes and start following new ones."""
        for pid in self.options.pids:
            self.arm(pid)
        if self.options.all_processes or self.options.comms:
            from recorder_tracer.procs import ProcessFollower
            self._watcher = ProcessFollower(self._on_process_event)
            self._watcher.start()
            for pid in _all_pids():
                if pid != os.getpid() and self._wants(pid):
                    self.arm(pid, required=False)
        if self.options.command:
            self.start_command(self.options.command)
        for item in self.options.spec.unmatched(sorted(self.seen_topics)):
            self.report(f"spec item {item!r} matches no topic yet; waiting for one")

    def stop(self) -> None:
        self._stop.set()

    def run(self, start: bool = True) -> None:
        """Stream until the duration ends, stop() is called, Ctrl-C, or the
        command started with -c exits. With `start` False, the caller has
        called start() already."""
        if start:
            self.start()
        deadline = (time.monotonic() + self.options.duration
                    if self.options.duration else None)
        try:
            while not self._stop.is_set():
                self.stream.poll(timeout_ms=50)
                self._flush()
                if deadline and time.monotonic() >= deadline:
                    break
                if self._child is not None and self._reap_child():
                    break
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def _reap_child(self) -> bool:
        pid, status = os.waitpid(self._child or -1, os.WNOHANG)
        if pid == 0:
            return False
        self._child_status = status
        self._on_exit(pid, describe_status(status))
        return True

    @property
    def child_status(self) -> int | None:
        return self._child_status

    def close(self) -> None:
        """Detach everything, drain the stream, emit what is left."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        with self._lock:
            for pid in list(self.processes):
                self.disarm(pid)
        self.stream.drain()
        self._flush(everything=True)

    def summaries(self) -> list[CpuSummary]:
        return self.stream.summary()


def describe_status(status: int) -> str:
    """'exit 0' or 'killed by SIGSEGV' from a wait status."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.WEXITSTATUS(status)}"


def _double(bits: int) -> float:
    import struct
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]
