"""A trace session: arm topics in processes, follow new ones, emit records.

    session = TraceSession(options, sink)
    session.run()            # until the duration, Ctrl-C, or the targets end
    session.summaries()      # per-CPU produced / received / lost

or, driving the loop yourself:

    session.start()
    while session.poll(timeout_ms=50):
        ...
    session.close()

With `options.usdt`, the session also traces other programs' USDT probes
(kernel/usdt.py) in the same loop: both programs' streams are polled
together and their records go through one reorder buffer into one sink.
Records leave in timestamp order across processes, CPUs and programs
(decode/reorder.py).

A traced process that exits is normal: the session drains what it recorded,
reports "process PID (comm) exited: STATUS", and still decodes its records
from its files. With only -p targets, the session ends with the last one.

(Past 400 lines: arming, following processes and the run loop share the
session's state; the record decoding is what remains of it.)
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from recorder_tracer.decode.record import Record
from recorder_tracer.decode.render import format_message
from recorder_tracer.decode.reorder import (
    REORDER_WINDOW_NS,
    ReorderBuffer,
    monotonic_ns,
)
from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.errors import TracerError
from recorder_tracer.kernel import arm
from recorder_tracer.kernel.harvest import Harvester, SiteKey, SiteStats
from recorder_tracer.kernel.stream import CpuSummary, Stream
from recorder_tracer.selftrace import PROCS, SESSION
from recorder_tracer.target import notes, procs
from recorder_tracer.target.dynamic import (
    DYNAMIC_PROBE,
    open_memory,
    runtime_topics,
    set_armed,
)
from recorder_tracer.target.memory import ProcessImage, Topic, load_bias, read_maps
from recorder_tracer.target.rings import decode_args

if TYPE_CHECKING:
    from pathlib import Path

    from recorder_tracer.kernel.pins import PinDir, PinnedLink
    from recorder_tracer.kernel.usdt import UsdtSelector, UsdtTracer
    from recorder_tracer.postmortem.snapshot import SnapshotOptions, SnapshotWatcher
    from recorder_tracer.target.procs import ProcEvent

__all__ = ["REORDER_WINDOW_NS", "TraceOptions", "TraceSession", "describe_status",
           "monotonic_ns", "poll_streams", "process_alive", "stop_on_signals"]

HARVEST_ENTRY_UNREADABLE = 0x1      # kernel/bpf/harvest.h
LIVENESS_INTERVAL_S = 0.5           # check that traced processes live this often

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
    pages_per_cpu: int = 1024
    command_stderr: int | None = None   # fd for -c's stderr (default: ours)
    usdt: list[UsdtSelector] = field(default_factory=list)  # other programs'
    topics: bool = True     # arm recorder topics (False: the USDT probes only)
    # Metrics only (metrics/aggregates.py): the kernel aggregates, no record is
    # copied (no flight ring, no stream); `value_arg` names the args[] index
    # each topic aggregates (None: the default, args[0]).
    metrics_only: bool = False
    value_arg: Callable[[str], int | None] = lambda topic: None
    # Crash snapshots of processes with a recorder core while the session
    # runs (postmortem/snapshot.py); None: none.
    snapshots: SnapshotOptions | None = None
    # A bpffs directory (kernel/pins.py): pin the flight ring and the links,
    # so they outlive this controller; take over a previous one's. None: no.
    pin_dir: str | None = None


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
    site_topics: dict[int, str | None] = field(default_factory=dict)
    runtime_armed: dict[str, Topic] = field(default_factory=dict)
    memory: int | None = None   # /proc/PID/mem of the image we armed

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
                # The shared probe of run-time topics names none of them.
                name = None if probe.name == DYNAMIC_PROBE else probe.name
                self.site_topics[probe_address] = name
                return name
        return None


def process_comm(pid: int) -> str:
    """procs.process_comm, or "?" for a process that is gone."""
    try:
        return procs.process_comm(pid)
    except (procs.ProcessGone, OSError):
        return "?"


class TraceSession:
    """Arms, streams and reorders; the CLI renders what `sink` receives.

    `stopping`, when given, is the event that stop() sets (the CLI passes
    the one its signal handlers set, so Ctrl-C during start-up counts).
    """

    def __init__(self, options: TraceOptions, sink: Sink,
                 report: Reporter = lambda message: None,
                 stopping: threading.Event | None = None) -> None:
        if not (options.topics or options.usdt):
            raise TracerError("nothing to trace: no topics and no USDT probe")
        self.options = options
        self.sink = sink
        self.report = report
        self.processes: dict[int, ArmedProcess] = {}
        self.exited: dict[int, ArmedProcess] = {}
        self.reorder = ReorderBuffer(sink, between_batches=self._while_flooded)
        self._stop = stopping if stopping is not None else threading.Event()
        self._lock = threading.RLock()  # the follower's thread arms too
        self._child: int | None = None
        self._child_status: int | None = None
        self._watcher: Any = None
        self._exits: queue.SimpleQueue[tuple[int, str, int]] = queue.SimpleQueue()
        self._rescan = threading.Event()
        self._deadline: float | None = None
        self._next_liveness = 0.0
        self._gone: set[int] = set()    # found gone once (see _check_alive)
        self.seen_topics: set[str] = set()
        self._exec_pending: set[int] = set()
        self._final_summaries: list[CpuSummary] | None = None
        self._final_stats: dict[SiteKey, SiteStats] | None = None
        self.harvester: Harvester | None = None
        self.stream: Stream | None = None
        self.pins: PinDir | None = None
        self._previous_links: list[PinnedLink] = []
        self._pinned: set[Path] = set()
        if options.pin_dir is not None and options.topics:
            from recorder_tracer.kernel.pins import PinDir
            self.pins = PinDir(options.pin_dir)
            self._previous_links = self.pins.links()
        if options.topics:
            try:
                self.harvester = Harvester(
                    stream=not options.metrics_only,
                    flight=not options.metrics_only,
                    flight_entries=options.flight_entries,
                    pin_dir=str(self.pins.path) if self.pins else None)
            except TracerError as error:
                if self.pins is not None:
                    raise TracerError(f"{error} (a flight ring pinned in "
                                      f"{self.pins.path} with another "
                                      "--flight-entries?)") from None
                raise
        if options.topics and not options.metrics_only:
            self.stream = Stream(self.harvester, self._on_record,
                                 pages_per_cpu=options.pages_per_cpu)
        self.snapshots: SnapshotWatcher | None = None
        self.usdt: UsdtTracer | None = None
        if options.usdt:
            from recorder_tracer.kernel.usdt import UsdtOptions, UsdtTracer
            self.usdt = UsdtTracer(
                UsdtOptions(list(options.usdt), pages_per_cpu=options.pages_per_cpu),
                sink, report, reorder=self.reorder)

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
        # Known before its first record can arrive (another thread polls).
        self.processes[pid] = process
        try:
            self._attach(process, probes)
        except BaseException:
            self.processes.pop(pid, None)
            raise
        SESSION.record("armed pid %d (%s): %d sites, %d run-time topics", pid,
                       process.comm, len(process.attachments),
                       len(process.runtime_armed))
        return process

    def _attach(self, process: ArmedProcess, probes: list[Any]) -> None:
        assert self.harvester is not None, "arming topics needs the harvester"
        seen = {(a.path, a.file_offset) for a in process.attachments}
        for probe in probes:
            # The run-time topics' shared probe: attached whenever present,
            # its topics are armed one by one (_arm_runtime_topics).
            if (probe.name != DYNAMIC_PROBE
                    and not self.options.spec.armed(probe.name)):
                continue
            site = (probe.path, probe.file_offset)
            if site in seen:
                continue
            seen.add(site)
            if probe.name != DYNAMIC_PROBE:
                self._choose_value(process, probe, probe.name, None)
            try:
                attachment = arm.attach_uprobe(
                    self.harvester.program_fd_for(probe.name, probe.arguments),
                    probe.path,
                    probe.file_offset,
                    process.pid, probe.semaphore_offset)
                process.attachments.append(attachment)
                process.armed_topics.add(probe.name)
                if self.pins is not None and attachment.method is arm.Method.LINK:
                    self._pinned.add(self.pins.pin_link(
                        attachment.fd, process.pid, probe.name, probe.file_offset))
                process.probes.append(probe)
            except arm.ArmError as error:
                if not procs.process_exists(process.pid):
                    self.report(f"process {process.pid} exited while arming")
                    return
                raise TracerError(str(error)) from None
        self._arm_runtime_topics(process)

    def _arm_runtime_topics(self, process: ArmedProcess) -> None:
        """Set the armed flag of the process's run-time topics that the spec
        selects (new ones too: called again by the periodic rescan)."""
        if DYNAMIC_PROBE not in process.armed_topics:
            return
        static = {probe.name for probe in process.probes}
        try:
            topics = process.image.topics()
        except OSError:
            return
        if process.memory is None:
            process.memory = open_memory(process.pid)
            if process.memory is None:
                return
        for topic in runtime_topics(topics, static):
            process.topics[topic.id] = topic
            if topic.name in process.runtime_armed:
                continue
            if not self.options.spec.armed(topic.name):
                continue
            for probe in process.probes:
                if probe.name == DYNAMIC_PROBE:
                    self._choose_value(process, probe, topic.name, topic.id)
            if set_armed(process.memory, topic, True):
                process.runtime_armed[topic.name] = topic
                self.seen_topics.add(topic.name)
                SESSION.record("armed run-time topic %s in pid %d", topic.name,
                               process.pid)

    def _choose_value(self, process: ArmedProcess, probe: Any, topic: str,
                      topic_id: int | None) -> None:
        """Tell the kernel which argument `topic` aggregates at `probe`'s
        site in `process`, before it can fire there. A site whose file is
        not mapped yet (-c, before exec) keeps the default, args[0]."""
        arg = self.options.value_arg(topic)
        if arg is None or self.harvester is None:
            return
        bias = load_bias(process.image.mappings, probe.path)
        if bias is not None:
            self.harvester.choose_value(process.pid, bias + probe.address,
                                        topic_id, arg)

    def _arm_after_exec(self) -> None:
        """Arm the processes that exec'd, once their new program has a
        recorder core; forget those that are gone."""
        for pid in sorted(self._exec_pending):
            if not procs.process_exists(pid):
                self._exec_pending.discard(pid)
            elif self.arm(pid, required=False):
                self._exec_pending.discard(pid)
                self.report(f"process {pid} exec'd {process_comm(pid)}: armed again")

    def _rescan_processes(self) -> None:
        """Arm what appeared in traced processes since they were armed:
        libraries loaded later (dlopen) and run-time topics."""
        with self._lock:
            self._arm_after_exec()
            for process in list(self.processes.values()):
                try:
                    process.image.mappings = read_maps(process.pid)
                    probes = [probe for probe in notes.probes_in_process(process.pid)
                              if probe.provider == "recorder"]
                except (OSError, notes.ProcessGone):
                    continue
                self.seen_topics.update(probe.name for probe in probes)
                self._attach(process, probes)

    def disarm(self, pid: int) -> None:
        """Detach every probe of `pid`; its semaphores drop back to zero."""
        process = self.processes.get(pid)
        if process is None:
            return
        # Exited first: a reader in another thread (the daemon's scrape)
        # always finds the process under one of the two names.
        self.exited[pid] = process
        del self.processes[pid]
        SESSION.record("disarming pid %d: %d sites", pid, len(process.attachments))
        if process.memory is not None:
            for topic in process.runtime_armed.values():
                set_armed(process.memory, topic, False)
            os.close(process.memory)
            process.memory = None
        # The image stays readable: records still in the stream are decoded
        # after the detach; close() and _end_process close it after draining.
        process.runtime_armed.clear()
        for attachment in process.attachments:
            arm.detach(attachment)
        process.attachments.clear()
        if self.pins is not None:
            self.pins.drop_pid(pid)

    def start_command(self, command: list[str]) -> int:
        """Fork `command`, arm its executable's probes before it runs, then
        let it exec: it is traced from its first record."""
        path = shutil.which(command[0])
        if path is None:
            raise TracerError(f"command not found: {command[0]}")
        # The mapped file's real path, as probes_in_process names it after
        # exec: a site is then recognised as armed already.
        try:
            probes = [probe for probe in notes.probes_in_file(os.path.realpath(path))
                      if probe.provider == "recorder"]
        except (OSError, notes.NotesError):
            # A script: its interpreter's probes are armed after exec.
            probes = []
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
        self.processes[pid] = process
        try:
            self._attach(process, probes)
        except BaseException:
            # Never leave the command waiting, or let it run untraced.
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(ready_write)
            self.processes.pop(pid, None)
            self._child = None
            raise
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

    def trace_process(self, pid: int, required: bool = True) -> bool:
        """Arm what the options select in `pid`: its recorder topics and the
        USDT probes. False when it has none of them (an error when
        `required`)."""
        with self._lock:
            armed = False
            if self.options.topics:
                armed = self.arm(pid, required) is not None
            if self.usdt is not None:
                armed = self.usdt.arm(pid, required=required) is not None or armed
            return armed

    def traced_pids(self) -> set[int]:
        """The processes traced now (topics or USDT probes armed)."""
        pids = set(self.processes) | self._exec_pending
        if self.usdt is not None:
            pids.update(self.usdt.processes)
        return pids

    def topic_names(self) -> set[str]:
        """The names records can carry now: armed topics and USDT probes."""
        names = {name for process in self.processes.values()
                 for name in process.armed_topics}
        if self.usdt is not None:
            names.update(site.probe.name for process in self.usdt.processes.values()
                         for site in process.sites)
        return names

    @property
    def _following(self) -> bool:
        return self.options.all_processes or bool(self.options.comms)

    def _wants(self, pid: int) -> bool:
        if self.options.all_processes:
            return True
        return bool(self.options.comms) and process_comm(pid) in self.options.comms

    def _on_process_event(self, event: ProcEvent) -> None:
        """In the follower's thread: arm a new process at once; leave an
        exit to poll(), which drains its records before reporting it."""
        from recorder_tracer.target.procs import ProcEventKind
        if event.kind is ProcEventKind.EXEC:
            self._on_exec(event.pid)
        elif event.kind is ProcEventKind.EXIT:
            if event.pid in self.traced_pids():
                self._exits.put((event.pid, _describe_exit_event(event),
                                 event.timestamp))
        elif event.kind is ProcEventKind.OVERRUN:
            self._rescan.set()      # exits and execs were lost: look again

    def _on_exec(self, pid: int) -> None:
        with self._lock:
            if pid in self.traced_pids():
                if pid == self._child and pid in self.processes:
                    self._refresh_image(self.processes[pid])
                    return
                if pid in self.processes:
                    # A new program: what we armed belonged to the old one.
                    # Its recorder core may load later (a Python import):
                    # the periodic rescan arms it when it appears.
                    self._exec_pending.add(pid)     # first: still traced
                    self.disarm(pid)
                    self.exited[pid].image.close()  # that program is gone
                    self._arm_after_exec()
                return
            if self._wants(pid) and self.trace_process(pid, required=False):
                self.report(f"tracing new process {pid} ({process_comm(pid)})")

    def _start_following(self) -> None:
        """Listen to the proc connector: new processes (--comm, --all) and
        exits with their status. Without it, exits are found by polling."""
        from recorder_tracer.target.procs import ProcessFollower
        follower = ProcessFollower(self._on_process_event)
        try:
            follower.start()
        except (OSError, TimeoutError) as error:
            if self._following:
                raise TracerError(f"cannot follow new processes: {error}") from None
            return
        self._watcher = follower

    def _scan(self) -> None:
        """Arm the wanted processes that run now and are not traced yet."""
        traced = self.traced_pids()
        for pid in _all_pids():
            if pid != os.getpid() and pid not in traced and self._wants(pid):
                self.trace_process(pid, required=False)

    def _check_alive(self) -> None:
        """Queue the exit of traced processes that are gone, for when no exit
        event tells us: no proc connector, events lost, or an exit before
        the event could concern us (while arming). With the connector, a
        process must be found gone twice: its event, with the status, wins."""
        gone = {pid for pid in self.traced_pids()
                if pid != self._child and not process_alive(pid)}
        confirmed = gone if self._watcher is None else gone & self._gone
        self._gone = gone - confirmed
        for pid in confirmed:
            self._exits.put((pid, "status unknown", monotonic_ns()))

    def _end_process(self, pid: int, status: str, when_ns: int) -> None:
        """Deliver what `pid` recorded up to its exit, say so, detach it."""
        with self._lock:
            process = self.processes.get(pid)
            usdt_process = self.usdt.processes.get(pid) if self.usdt else None
            if process is None and usdt_process is None:
                return              # reported already (exit event and waitpid)
            for stream in self._streams():
                stream.drain()
            self.reorder.flush(until_ns=when_ns)
            comm = process.comm if process else (
                usdt_process.comm if usdt_process else "?")
            self.report(f"process {pid} ({comm}) exited: {status}")
            PROCS.record("pid %d (%s) exited: %s", pid, comm, status)
            self.disarm(pid)
            if process is not None:
                process.image.close()   # its address space is gone
            if self.usdt is not None:
                self.usdt.disarm(pid)

    # -- records --------------------------------------------------------------

    def _on_record(self, cpu: int, raw: Any) -> None:
        self.reorder.push(self.decode(cpu, raw))

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
            if topic is None and procs.process_exists(pid):
                try:
                    process.image = ProcessImage.of(pid)
                    process.topics.update({t.id: t for t in process.image.topics()})
                except OSError:
                    pass
                topic = process.topics.get(entry.topic_id)
            topic_name = topic.name if topic else f"topic{entry.topic_id}"
        strings = iter(raw.strings)

        def string(address: int) -> str | None:
            """The next string BPF captured, else read from the process."""
            captured = next(strings, None)
            if captured is None:
                return process.image.string(address)
            if captured.length > 0:
                return bytes(captured.text)[: captured.length - 1].decode(
                    "utf-8", "replace")
            return None     # unreadable: rendered as such

        args = decode_args(entry.nargs, entry.arg_types, entry.args, string)
        fmt = process.image.string(entry.format)
        where = process.image.string(entry.where) or "?"
        message = (format_message(fmt, args) if fmt is not None
                   else f"<unreadable format {entry.format:#x}>")
        return Record(ts=entry.timestamp, pid=pid, tid=entry.tid,
                      comm=raw.comm.decode(errors="replace"), topic=topic_name,
                      where=where, message=message, args=args, cpu=cpu)

    # -- running --------------------------------------------------------------

    def start(self) -> None:
        """Arm the chosen processes and start following new ones."""
        if self.options.duration:
            self._deadline = time.monotonic() + self.options.duration
        SESSION.record("starting: %d pids, command %d, following %d",
                       len(self.options.pids), bool(self.options.command),
                       self._following)
        self._start_following()
        if self.options.snapshots is not None:
            from dataclasses import replace

            from recorder_tracer.postmortem.snapshot import SnapshotWatcher
            snapshot_options = self.options.snapshots
            if snapshot_options.pin_dir is None and self.pins is not None:
                snapshot_options = replace(snapshot_options,
                                           pin_dir=str(self.pins.path))
            self.snapshots = SnapshotWatcher(snapshot_options, self.report)
            self.snapshots.start()
        for pid in self.options.pids:
            self.trace_process(pid)
        if self._following:
            self._scan()
        if self.options.command:
            with self._lock:    # its EXEC event must find it armed
                self._start_command(self.options.command)
        if self.pins is not None and self._previous_links:
            # Armed again by us where asked: the previous controller's links
            # can go (ours replaced those with the same name already).
            self.pins.drop_links([pinned for pinned in self._previous_links
                                  if pinned.path not in self._pinned])
            pids = sorted({pinned.pid for pinned in self._previous_links})
            self.report(f"took over from a previous controller: "
                        f"{len(self._previous_links)} pinned links (pids "
                        f"{', '.join(map(str, pids))}) and its flight ring")
            self._previous_links = []
        if self.options.topics:
            for item in self.options.spec.unmatched(sorted(self.seen_topics)):
                self.report(f"spec item {item!r} matches no topic yet; "
                            "waiting for one")

    def _start_command(self, command: list[str]) -> None:
        if self.usdt is None:
            self.start_command(command)
            return
        # USDT sites need the executable mapped: the USDT tracer stops the
        # command at its exec; its recorder topics are armed there too.
        def arm_topics(pid: int) -> None:
            if self.options.topics:
                self.arm(pid, required=False)
        self._child = self.usdt.start_command(command, on_stopped=arm_topics)

    def stop(self) -> None:
        """Make run() return, and poll() return False."""
        self._stop.set()

    def poll(self, timeout_ms: int = 50) -> bool:
        """Wait up to `timeout_ms` for records, deliver those ready (older
        than the reordering window), handle exits and reap the -c command.

        False when the session should end: stop() (or SIGINT/SIGTERM in
        run()), the duration is over, the -c command exited, or every -p
        process exited (when not following --comm or --all).
        """
        if self._streams():
            poll_streams(self._streams(), timeout_ms)
        else:       # metrics only: the kernel aggregates, nothing to read
            self._stop.wait(timeout_ms / 1000)
        if self.snapshots is not None:
            for path in self.snapshots.poll(timeout_ms=0):
                self.report(f"snapshot written: {path}")
        if self._rescan.is_set() or time.monotonic() >= self._next_liveness:
            self._next_liveness = time.monotonic() + LIVENESS_INTERVAL_S
            self._check_alive()
            self._rescan_processes()
            if self._rescan.is_set() and self._following:
                self._scan()
            self._rescan.clear()
        while True:
            try:
                pid, status, when_ns = self._exits.get_nowait()
            except queue.Empty:
                break
            self._end_process(pid, status, when_ns)
        self.reorder.flush()
        if self._child is not None:
            self._reap_child()
        return not self._ended()

    def _while_flooded(self) -> None:
        """Every few thousand records, inside a stream's callback: poll()
        may not return while a flood lasts, so records leave from here, and
        a stop (or the end of the duration) detaches every probe, which
        ends the flood and lets poll() return."""
        self.reorder.flush()
        if self._requested_end():
            self._disarm_all()

    def _disarm_all(self) -> None:
        """Detach every probe of every traced process, topics and USDT."""
        with self._lock:
            for pid in list(self.processes):
                self.disarm(pid)
            if self.usdt is not None:
                for pid in list(self.usdt.processes):
                    self.usdt.disarm(pid)

    def _requested_end(self) -> bool:
        return self._stop.is_set() or (self._deadline is not None and
                                       time.monotonic() >= self._deadline)

    def _ended(self) -> bool:
        if self._requested_end() or self._child_status is not None:
            return True
        only_pids = not (self._following or self.options.command)
        return only_pids and not self.traced_pids()

    def run(self, start: bool = True) -> None:
        """Stream until the duration ends, stop() is called, SIGINT or
        SIGTERM, or the targets end (see poll()). With `start` False, the
        caller has called start() already. Detaches and drains at the end."""
        with stop_on_signals(self._stop):
            try:
                if start:
                    self.start()
                while self.poll(timeout_ms=50):
                    pass
            finally:
                self.close()

    def _reap_child(self) -> bool:
        pid, status = os.waitpid(self._child or -1, os.WNOHANG)
        if pid == 0:
            return False
        self._child_status = status
        self._end_process(pid, describe_status(status), monotonic_ns())
        self._child = None
        return True

    @property
    def child_status(self) -> int | None:
        """The -c command's wait status once it has ended."""
        return self._child_status

    def _streams(self) -> list[Stream]:
        streams = [self.stream] if self.stream is not None else []
        if self.usdt is not None:
            streams.append(self.usdt.stream)
        return streams

    def close(self) -> None:
        """Detach everything, drain the streams, emit what is left."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self._disarm_all()
        for stream in self._streams():
            stream.drain()
        self.reorder.flush_all()
        if self.snapshots is not None:    # captures of the last moments
            for path in self.snapshots.poll(timeout_ms=0):
                self.report(f"snapshot written: {path}")
        for process in self.exited.values():
            process.image.close()
        # The totals need the maps: keep them, then free every kernel object.
        self._final_summaries = self._sum_streams()
        self._final_stats = self.site_stats()
        self._release()

    def _release(self) -> None:
        if self.snapshots is not None:
            self.snapshots.close()
        if self.stream is not None:
            self.stream.close()
        if self.harvester is not None:
            self.harvester.close()
        if self.pins is not None:
            self.pins.clear()       # a clean end: nothing outlives us
        if self.usdt is not None:
            self.usdt.release()
        for cpu in self.summaries():
            SESSION.record("closed: CPU %d produced %d, received %d, lost %d",
                           cpu.cpu, cpu.produced, cpu.received, cpu.lost)

    def flight_records(self) -> list[Record]:
        """The records in the kernel flight ring (the last FLIGHT_ENTRIES per
        CPU of armed topics), in time order; with a pin directory, also
        those a previous controller's links kept while none ran."""
        if self.harvester is None:
            return []
        seen = set()
        records = []
        for cpu, raw in self.harvester.flight_records():
            record = self.decode(cpu, raw)
            key = (record.pid, record.tid, record.ts, record.topic, record.message)
            if key not in seen:     # two programs in a takeover's overlap
                seen.add(key)
                records.append(record)
        return sorted(records, key=lambda record: record.ts)

    def topic_counts(self) -> dict[SiteKey, int]:
        """Hits the kernel counted per (pid, site); final after close()."""
        return {key: stats.count for key, stats in self.site_stats().items()}

    def site_stats(self) -> dict[SiteKey, SiteStats]:
        """What the kernel aggregated per (pid, site, topic id); final after
        close()."""
        if self._final_stats is not None:
            return self._final_stats
        return self.harvester.site_stats() if self.harvester is not None else {}

    @property
    def lock(self) -> threading.RLock:
        """Held while processes are armed, disarmed or forgotten: a reader
        in another thread takes it to see them consistently."""
        return self._lock

    def forget(self, pid: int) -> None:
        """Drop what is kept of an exited process: its image and its
        kernel metrics (the daemon calls this after a grace period)."""
        with self._lock:
            process = self.exited.pop(pid, None)
            if process is not None:
                process.image.close()
            if self.harvester is not None and self._final_stats is None:
                self.harvester.forget_pid(pid)

    def summaries(self) -> list[CpuSummary]:
        """Per-CPU produced, received and lost over every stream; final
        after close()."""
        if self._final_summaries is not None:
            return self._final_summaries
        return self._sum_streams()

    def _sum_streams(self) -> list[CpuSummary]:
        totals: dict[int, CpuSummary] = {}
        for stream in self._streams():
            for cpu in stream.summary():
                seen = totals.get(cpu.cpu)
                totals[cpu.cpu] = cpu if seen is None else CpuSummary(
                    cpu.cpu, seen.produced + cpu.produced,
                    seen.received + cpu.received, seen.lost + cpu.lost)
        return [totals[cpu] for cpu in sorted(totals)]

    @property
    def unknown_sites(self) -> int:
        """USDT hits whose site was not known yet (their arguments lost)."""
        return self.usdt.unknown_sites if self.usdt is not None else 0


@contextlib.contextmanager
def stop_on_signals(
        stopping: threading.Event | None = None) -> Iterator[threading.Event]:
    """While inside, SIGINT and SIGTERM set `stopping` (made if not given)
    instead of raising KeyboardInterrupt or ending the process; the previous
    handlers come back on exit. Outside the main thread, it does nothing.

    A KeyboardInterrupt raised inside bcc's ctypes perf-buffer callback is
    printed and swallowed, so a loop would miss Ctrl-C; a flag cannot be
    missed, and the loop then detaches, drains and summarises.

    >>> with stop_on_signals() as stopping:
    ...     os.kill(os.getpid(), signal.SIGTERM)
    ...     time.sleep(0.01)
    >>> stopping.is_set()
    True
    """
    event = stopping if stopping is not None else threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = {number: signal.signal(number, lambda *_: event.set())
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)


def poll_streams(streams: list[Stream], timeout_ms: int) -> None:
    """Wait up to `timeout_ms` in all for records of `streams`, delivering
    what each holds. Each stream waits its share in turn (through its own
    poll(), whatever buffers it reads), so a record waits at most about
    `timeout_ms` before it is read, whichever program sent it."""
    share = max(1, timeout_ms // max(1, len(streams))) if timeout_ms > 0 else 0
    for stream in streams:
        stream.poll(timeout_ms=share)


def describe_status(status: int) -> str:
    """How a process ended, from its wait status.

    >>> describe_status(3 << 8), describe_status(0x80 | 11)
    ('exit code 3', 'killed by SIGSEGV (core dumped)')
    """
    return _describe_exit(*procs.describe_exit(status))


def _describe_exit_event(event: ProcEvent) -> str:
    return _describe_exit(event.exit_code, event.signal, event.core_dumped)


def _describe_exit(code: int | None, killer: int | None, core: bool) -> str:
    if killer is None:
        return f"exit code {code}"
    try:
        name = signal.Signals(killer).name
    except ValueError:
        name = f"signal {killer}"
    return f"killed by {name}{' (core dumped)' if core else ''}"


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]
