"""The Source of recorder topics: arm them per process, decode their records.

One harvest program (kernel/harvest.py) serves every site; each process
gets its topics' sites attached with the topic's semaphore (kernel/arm.py),
and its run-time topics armed through their flag in its memory
(target/dynamic.py). A record's format, location and %s arguments are
addresses in the process that wrote it: they are read from it while it
runs, and from its files once it has exited (target/memory.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from recorder_tracer.abi import HARVEST_ENTRY_UNREADABLE
from recorder_tracer.decode.record import Record
from recorder_tracer.errors import TracerError
from recorder_tracer.kernel import arm
from recorder_tracer.kernel.harvest import Harvester, SiteKey, SiteStats
from recorder_tracer.kernel.stream import Stream
from recorder_tracer.selftrace import SESSION
from recorder_tracer.session.armed import ArmedProcess
from recorder_tracer.session.harvest_records import flight_records, harvest_record
from recorder_tracer.session.options import TraceOptions
from recorder_tracer.target import notes, procs
from recorder_tracer.target.dynamic import (
    DYNAMIC_PROBE,
    open_memory,
    runtime_topics,
    set_armed,
)
from recorder_tracer.target.memory import ProcessImage, load_bias, read_maps

# Exited processes kept to decode their late records (and for the daemon's
# grace period); past this, the oldest are forgotten.
EXITED_KEPT = 512

if TYPE_CHECKING:
    from pathlib import Path

    from recorder_tracer.kernel.pins import PinDir, PinnedLink
    from recorder_tracer.session.coverage import SessionCoverage

Emit = Callable[[Record], None]
Reporter = Callable[[str], None]


def process_comm(pid: int) -> str:
    """procs.process_comm, or "?" for a process that is gone."""
    try:
        return procs.process_comm(pid)
    except (procs.ProcessGone, OSError):
        return "?"


def recorder_probes(pid: int) -> list[Any]:
    """The recorder probes of the files `pid` maps."""
    return [probe for probe in notes.probes_in_process(pid)
            if probe.provider == "recorder"]


class RecorderTopics:
    """Recorder topics as a Source (session/source.py): the harvest program,
    its stream, and per process the sites and run-time topics armed."""

    def __init__(self, options: TraceOptions, emit: Emit, report: Reporter,
                 lock: threading.RLock) -> None:
        self.options = options
        self.emit = emit
        self.report = report
        self.lock = lock                # the session's: the follower arms too
        self.processes: dict[int, ArmedProcess] = {}
        self.exited: dict[int, ArmedProcess] = {}
        self.seen_topics: set[str] = set()
        self.exec_pending: set[int] = set()
        self.pins: PinDir | None = None
        self._previous_links: list[PinnedLink] = []
        self._pinned: set[Path] = set()
        if options.pin_dir is not None:
            from recorder_tracer.kernel.pins import PinDir
            self.pins = PinDir(options.pin_dir)
            self._previous_links = self.pins.links()
            if not arm.links_enabled(-1):
                # Perf events close with this process: nothing to pin.
                report("pins: no uprobe_multi links on this kernel (Linux 6.9+), "
                       "so armed topics end with this controller; the flight "
                       f"ring and metrics pinned in {self.pins.path} keep what "
                       "they hold, and crash snapshots go on")
        try:
            self.harvester = Harvester(
                stream=not options.metrics_only, flight=not options.metrics_only,
                flight_entries=options.flight_entries,
                pin_dir=str(self.pins.path) if self.pins else None)
        except TracerError as error:
            if self.pins is not None:
                raise TracerError(f"{error} (a flight ring pinned in "
                                  f"{self.pins.path} with another "
                                  "--flight-entries?)") from None
            raise
        self.stream: Stream | None = None
        if not options.metrics_only:
            self.stream = Stream(self.harvester, self._on_record,
                                 pages_per_cpu=options.pages_per_cpu)
        self.streams = [self.stream] if self.stream is not None else []
        # Set by the session (session/coverage.py): told what is armed, it
        # backfills; records it brought already are not emitted twice.
        self.coverage: SessionCoverage | None = None

    # -- arming ---------------------------------------------------------------

    def arm(self, pid: int, required: bool = True,
            started: bool = False) -> ArmedProcess | None:
        """Arm the selected topics of `pid`; None if it has no recorder core
        (an error when `required`). The -c command (`started`) is kept even
        without one: a core it loads later (a Python import) is armed by
        rescan()."""
        if pid in self.processes:
            return self.processes[pid]
        try:
            image = ProcessImage.of(pid)
            probes = recorder_probes(pid)
        except (FileNotFoundError, ProcessLookupError, notes.ProcessGone):
            if required:
                raise TracerError(f"process {pid} does not exist") from None
            return None
        except OSError as error:
            if required:
                raise TracerError(f"cannot read process {pid}: "
                                  f"{error.strerror}") from None
            return None
        if not probes and not started:
            if required:
                raise TracerError(f"process {pid} ({process_comm(pid)}) has no "
                                  "recorder probes (no recorder core mapped)")
            if self.coverage is not None:
                self.coverage.not_armed(pid)
            return None
        process = ArmedProcess(pid, process_comm(pid), image,
                               {topic.id: topic for topic in image.topics()},
                               [], set(), ns_pid=procs.namespace_pid(pid))
        self.seen_topics.update(probe.name for probe in probes)
        # Known before its first record can arrive (another thread polls).
        self.processes[pid] = process
        try:
            self._attach(process, probes)
        except BaseException:
            self.processes.pop(pid, None)
            raise
        if self.coverage is not None:
            self.coverage.armed(process)
        SESSION.record("armed pid %d (%s): %d sites, %d run-time topics", pid,
                       process.comm, len(process.attachments),
                       len(process.runtime_armed))
        return process

    def _attach(self, process: ArmedProcess, probes: list[Any]) -> None:
        seen = {(a.path, a.file_offset) for a in process.attachments}
        for probe in probes:
            # The run-time topics' shared probe: attached whenever present,
            # its topics are armed one by one (arm_runtime_topics).
            if (probe.name != DYNAMIC_PROBE
                    and not self.options.spec.armed(probe.name)):
                continue
            site = (probe.path, probe.file_offset)
            if site in seen:
                continue
            seen.add(site)
            if probe.name != DYNAMIC_PROBE:
                choose_value(self, process, probe, probe.name, None)
            try:
                attachment = arm.attach_uprobe(
                    self.harvester.program_fd_for(probe.name, probe.arguments),
                    probe.path, probe.file_offset, process.pid,
                    probe.semaphore_offset, probe.identity)
                process.attachments.append(attachment)
                process.probes.append(probe)
                if self.pins is not None and attachment.method is arm.Method.LINK:
                    self._pinned.add(self.pins.pin_link(
                        attachment.fd, process.pid, probe.name, probe.file_offset))
                # Last: a thread that sees the topic armed finds its site too
                # (metrics name their rows through process.probes).
                process.armed_topics.add(probe.name)
            except arm.ArmError as error:
                if not procs.process_exists(process.pid):
                    self.report(f"process {process.pid} exited while arming")
                    return
                raise TracerError(str(error)) from None
        arm_runtime_topics(self, process)

    def _arm_after_exec(self) -> None:
        """Arm the processes that exec'd, once their new program has a
        recorder core; forget those that are gone."""
        for pid in sorted(self.exec_pending):
            if not procs.process_exists(pid):
                self.exec_pending.discard(pid)
            elif self.arm(pid, required=False):
                self.exec_pending.discard(pid)
                self.report(f"process {pid} exec'd {process_comm(pid)}: armed again")

    def rescan(self) -> None:
        """Arm what appeared in traced processes since they were armed:
        libraries loaded later (dlopen) and run-time topics."""
        with self.lock:
            self._arm_after_exec()
            for process in list(self.processes.values()):
                try:
                    if not process.image.refresh_maps(read_maps(process.pid)):
                        continue    # exec'd: armed again at its EXEC
                    probes = recorder_probes(process.pid)
                except (OSError, notes.ProcessGone):
                    continue
                self.seen_topics.update(probe.name for probe in probes)
                self._attach(process, probes)
                if self.coverage is not None:
                    self.coverage.found_core(process)   # a core loaded late

    def on_exec(self, pid: int, started: bool, exec_ns: int) -> None:
        """A traced process exec'd: the -c command's new image is read
        again; any other runs a new program, armed again once it has a
        recorder core (a Python import may load it later)."""
        process = self.processes.get(pid)
        if process is None:
            return
        if started:
            self._refresh_image(process)
            return
        self.exec_pending.add(pid)     # first: still traced
        self.disarm(pid)
        # That program is gone; its records still in the streams are
        # decoded with it (its files), not with the program armed next.
        self.exited[pid].image.close()
        self.exited[pid].exec_ns = exec_ns
        self._arm_after_exec()

    def _refresh_image(self, process: ArmedProcess) -> None:
        """After exec: cache the maps and topics (and arm shared libraries)."""
        try:
            process.image = ProcessImage.of(process.pid)
            process.topics = {topic.id: topic for topic in process.image.topics()}
            process.comm = process_comm(process.pid)
            self._attach(process, recorder_probes(process.pid))
            if self.coverage is not None:
                self.coverage.armed(process)
        except (FileNotFoundError, ProcessLookupError, notes.ProcessGone):
            pass

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
        # after the detach; end() and close() close it after draining.
        process.runtime_armed.clear()
        for attachment in process.attachments:
            arm.detach(attachment)
        process.attachments.clear()
        if self.pins is not None:
            self.pins.drop_pid(pid)

    def end(self, pid: int) -> None:
        """`pid` exited, its records delivered: detach, close its image."""
        process = self.processes.get(pid)
        self.disarm(pid)
        if process is not None:
            process.image.close()   # its address space is gone
        for oldest in list(self.exited)[:-EXITED_KEPT]:   # or --all grows
            self.forget(oldest)

    def take_over(self) -> None:
        """Once armed: drop a previous controller's pinned links."""
        if self.pins is not None and self._previous_links:
            take_over(self.pins, self._previous_links, self._pinned, self.report)
            self._previous_links = []

    # -- what the session asks ------------------------------------------------

    def traced_pids(self) -> set[int]:
        """Armed processes, and those waiting for a core after an exec."""
        return set(self.processes) | self.exec_pending

    def comm_of(self, pid: int) -> str | None:
        """The comm of an armed process, None if not armed here."""
        process = self.processes.get(pid)
        return process.comm if process is not None else None

    def topic_names(self) -> set[str]:
        """The topics armed now, over every process."""
        return {name for process in self.processes.values()
                for name in process.armed_topics}

    # -- records --------------------------------------------------------------

    def _on_record(self, cpu: int, raw: Any) -> None:
        if (self.coverage is not None and not raw.status & HARVEST_ENTRY_UNREADABLE
                and not self.coverage.live(raw.pid, raw.entry)):
            return      # backfilled or copied already
        self.emit(self.decode(cpu, raw))

    def decode(self, cpu: int, raw: Any) -> Record:
        """A harvest record, with its format and location read from the
        process that wrote it (or its files, once it has exited)."""
        return harvest_record(self.processes, self.exited, cpu, raw)

    def flight_records(self) -> list[Record]:
        """The records in the kernel flight ring (the last FLIGHT_ENTRIES per
        CPU of armed topics), in time order; with a pin directory, also
        those a previous controller's links kept while none ran."""
        return flight_records(self.harvester, self.decode)

    def site_stats(self) -> dict[SiteKey, SiteStats]:
        """What the kernel aggregated per (pid, site, topic id)."""
        return self.harvester.site_stats()

    def forget(self, pid: int, metrics: bool = True) -> None:
        """Drop an exited process's image and (with `metrics`) its kernel
        metrics."""
        process = self.exited.pop(pid, None)
        if process is not None:
            process.image.close()
        if metrics:
            self.harvester.forget_pid(pid)

    def close_images(self) -> None:
        """Close the images of exited processes (after the last decode)."""
        for process in self.exited.values():
            process.image.close()

    def release(self) -> None:
        """Free the stream, the program and, on a clean end, the pins."""
        if self.stream is not None:
            self.stream.close()
        self.harvester.close()
        if self.pins is not None:
            self.pins.clear()       # a clean end: nothing outlives us


def take_over(pins: PinDir, previous: list[PinnedLink], ours: set[Path],
              report: Reporter) -> None:
    """Drop the `previous` controller's links that we did not replace (ours
    replaced those with the same name already), and say so."""
    pins.drop_links([pinned for pinned in previous if pinned.path not in ours])
    pids = sorted({pinned.pid for pinned in previous})
    report(f"took over from a previous controller: {len(previous)} pinned links "
           f"(pids {', '.join(map(str, pids))}) and its flight ring")


# -- run-time topics and aggregated values, for a RecorderTopics (`source`) -

def arm_runtime_topics(source: RecorderTopics, process: ArmedProcess) -> None:
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
        if not source.options.spec.armed(topic.name):
            continue
        for probe in process.probes:
            if probe.name == DYNAMIC_PROBE:
                choose_value(source, process, probe, topic.name, topic.id)
        if set_armed(process.memory, topic, True):
            process.runtime_armed[topic.name] = topic
            source.seen_topics.add(topic.name)
            if source.coverage is not None:
                # Made while we trace: its records before now too.
                source.coverage.backfill_topic(process, topic)
            SESSION.record("armed run-time topic %s in pid %d", topic.name,
                           process.pid)

def choose_value(source: RecorderTopics, process: ArmedProcess, probe: Any,
                 topic: str, topic_id: int | None) -> None:
    """Tell the kernel which argument `topic` aggregates at `probe`'s
    site in `process`, before it can fire there. A site whose file is
    not mapped yet keeps the default, args[0]."""
    arg = source.options.value_arg(topic)
    if arg is None:
        return
    bias = load_bias(process.image.mappings, probe.path)
    if bias is not None:
        source.harvester.choose_value(process.pid, bias + probe.address,
                                    topic_id, arg)
