"""The Source of recorder topics in batches, from the processes' own rings.

`recorder trace`'s default for recorder topics (session/source.py): nothing
is attached to their probe sites; kernel/batch.py copies what armed topics
made from each process's in-process rings, by sequence number, in its own
context (when a thread leaves its CPU, on a tick, at exit and at a fatal
signal), and kernel/batch_stream.py reads it. Records decode as harvest
records do (session/harvest_records.py). `--latency` and pinned sessions
use session/topics.py, the per-record trap, instead.

arm_image() chooses a process's topics and tells BPF the names the spec
arms (so topics registered later are harvested from their first record);
arm_at_exec() arms a command stopped at its exec by its registry's symbol.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any

from recorder_tracer.decode.entry import RawEntry
from recorder_tracer.decode.record import Record
from recorder_tracer.decode.reorder import ReorderBuffer
from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.decode.usdt_args import symbol_resolver
from recorder_tracer.errors import TracerError
from recorder_tracer.kernel.batch import NAME_MAX, BatchHarvester, TopicLoss
from recorder_tracer.kernel.batch_stream import BatchRecord, BatchStream
from recorder_tracer.output.capture import CaptureWriter
from recorder_tracer.output.chrome_plans import ChromePlans
from recorder_tracer.output.json_plans import ChunkLines, JsonPlans
from recorder_tracer.output.text_plans import TextPlans
from recorder_tracer.selftrace import SESSION
from recorder_tracer.session.armed import ArmedProcess
from recorder_tracer.session.harvest_records import harvest_record
from recorder_tracer.session.options import TraceOptions
from recorder_tracer.session.topics import EXITED_KEPT, process_comm, recorder_probes
from recorder_tracer.target import notes, procs
from recorder_tracer.target.memory import ProcessImage, Topic, load_bias, read_maps

Emit = Callable[[Record], None]
Reporter = Callable[[str], None]

# -- arming a process: which topics, from which index ----------------------

REGISTRY_SYMBOL = "recorder_registry"


def arm_image(harvester: BatchHarvester, pid: int, image: ProcessImage,
              spec: TopicSpec, from_start: bool = False) -> list[Topic] | None:
    """Harvest the topics of `image` that `spec` arms; returns the topics
    found in its registry, or None when it has no registry (yet). Called
    again for an armed process, it only publishes new names."""
    base = image.topic_count()      # before the list: see BatchHarvester.arm
    topics = image.topics()
    if not topics and image.find_registry() is None:
        return None
    harvester.arm_names([topic.name for topic in topics if spec.armed(topic.name)])
    if pid not in harvester.armed:
        wanted = [topic for topic in topics if spec.armed(topic.name)]
        if not harvester.arm(pid, image, wanted, base, from_start=from_start):
            return None
    return topics


def arm_at_exec(harvester: BatchHarvester, pid: int, executable: str,
                spec: TopicSpec) -> bool:
    """Arm a process stopped at its exec, before its core initialised:
    BPF finds its topics by name from the registry symbol of a statically
    linked core. False when the core is in a library not mapped yet."""
    resolve = symbol_resolver(executable)
    address = resolve(REGISTRY_SYMBOL)
    if address is None:
        return False
    try:
        bias = load_bias(read_maps(pid), executable)
        probes = notes.probes_in_file(executable)
    except (OSError, notes.NotesError):
        return False
    if bias is None:
        return False
    harvester.arm_names([probe.name for probe in probes
                         if probe.provider == notes.RECORDER_PROVIDER
                         and spec.armed(probe.name)])
    harvester.arm_registry(pid, bias + address)
    return True



class BatchTopics:
    """Recorder topics harvested in batches, as a Source."""

    pins = None         # a pinned session traps (session/topics.py)
    harvester = None    # no per-record program: no flight ring, no metrics

    def __init__(self, options: TraceOptions, reorder: ReorderBuffer,
                 report: Reporter, lock: threading.RLock,
                 plans: JsonPlans | TextPlans | ChromePlans | None = None) -> None:
        self.options = options
        self.emit = reorder.push
        # Decoding in batches: a chunk's entries are decoded at once and
        # pushed on together; with `plans` (the sink's), as lines.
        self.lines = ChunkLines(plans, reorder.push_many, self._chunk_process,
                                self._entry_record, reorder.push_lines)
        self.report = report
        self.lock = lock
        self.processes: dict[int, ArmedProcess] = {}
        self.exited: dict[int, ArmedProcess] = {}
        self.seen_topics: set[str] = set()
        self.exec_pending: set[int] = set()
        self.batch = BatchHarvester()
        self.capture: CaptureWriter | None = None
        if options.capture is not None:     # raw messages to a file, no decoding
            self.capture = CaptureWriter(options.capture, self._text)
        # Live: a quarter of the trap's ring holds as many records (chunks
        # carry entries, not harvest records), and the processes' own rings
        # hold what a full stream leaves there. A capture keeps up with the
        # kernel but not with a loaded machine's pauses: four times the
        # trap's absorb ~200 ms at 500 k records/s.
        pages = (options.pages_per_cpu * 4 if self.capture is not None
                 else max(1, options.pages_per_cpu // 4))
        self.stream = BatchStream(
            self.batch, self._on_record, pages_per_cpu=pages, on_topic=self._on_topic,
            on_message=self.capture.message if self.capture is not None else None,
            on_unnamed=self._on_unnamed,
            on_chunk=self.lines.on_chunk)
        if self.capture is None:    # long runs of lines rendered: read between
            reorder.while_emitting = self.stream.refill
        self.streams: list[Any] = [self.stream]
        self._final_losses: dict[tuple[int, str], TopicLoss] | None = None

    # -- arming ---------------------------------------------------------------

    def arm(self, pid: int, required: bool = True,
            started: bool = False) -> ArmedProcess | None:
        """Harvest the selected topics of `pid` from now on (the -c command,
        `started` and stopped at its exec: from its first record)."""
        if pid in self.processes:
            return self.processes[pid]
        try:
            image = ProcessImage.of(pid)
            probes = [] if started else recorder_probes(pid)
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
            return None
        process = ArmedProcess(pid, process_comm(pid), image, {}, [], set())
        self.seen_topics.update(probe.name for probe in probes)
        self.processes[pid] = process
        if started:
            self._started_pid = pid
            self._arm_started(process)
        else:
            self._arm(process)
        SESSION.record("batch-armed pid %d (%s): %d topics", pid, process.comm,
                       len(process.armed_topics))
        return process

    def _arm_started(self, process: ArmedProcess) -> None:
        """The -c command before its core initialised: BPF finds its topics
        by name (a static core's registry symbol), or, for a core in a
        library, rescan() arms it from its first record once mapped."""
        try:
            executable = os.readlink(f"/proc/{process.pid}/exe")
        except OSError:
            return
        if arm_at_exec(self.batch, process.pid, executable, self.options.spec):
            names = self._names_in(executable)
            process.armed_topics.update(n for n in names if self.options.spec.armed(n))

    def _names_in(self, executable: str) -> set[str]:
        try:
            names = {probe.name for probe in notes.probes_in_file(executable)
                     if probe.provider == notes.RECORDER_PROVIDER}
        except (OSError, notes.NotesError):
            return set()
        self.seen_topics.update(names)
        return names

    def _arm(self, process: ArmedProcess) -> None:
        """Harvest the process's armed topics (again: publishes new names)."""
        try:
            topics = arm_image(self.batch, process.pid, process.image,
                               self.options.spec,
                               from_start=process.pid == self._started_pid)
        except OSError:
            return
        if topics is None:
            return
        fresh = {topic.id for topic in topics} - set(process.topics)
        process.topics.update({topic.id: topic for topic in topics})
        process.armed_topics.update(t.name for t in topics
                                    if self.options.spec.armed(t.name))
        self.seen_topics.update(topic.name for topic in topics)
        if self.capture is not None and fresh:
            self.capture.process(process.pid, process.comm,
                                 {i: t.name for i, t in process.topics.items()})

    _started_pid: int | None = None     # the -c command: from its first record

    def rescan(self) -> None:
        """Arm processes that exec'd into a core, and publish the names of
        topics registered since (BPF arms them from their first record)."""
        with self.lock:
            for pid in sorted(self.exec_pending):
                if not procs.process_exists(pid):
                    self.exec_pending.discard(pid)
                elif self.arm(pid, required=False):
                    self.exec_pending.discard(pid)
                    self.report(f"process {pid} exec'd {process_comm(pid)}: "
                                "armed again")
            for process in list(self.processes.values()):
                try:
                    maps = read_maps(process.pid)
                except OSError:
                    continue
                # A zombie's are empty, an exec'd one's another program's:
                # keep what it had.
                if maps and process.image.refresh_maps(maps):
                    self._arm(process)

    def on_exec(self, pid: int, started: bool, exec_ns: int) -> None:
        """The -c command's exec is where we armed it; another process runs
        a new program, armed again once it has a core."""
        process = self.processes.get(pid)
        if process is None or started:
            if process is not None:
                self._arm(process)
            return
        self.exec_pending.add(pid)
        self.disarm(pid)
        # Its records still in the stream are the old program's: decoded
        # with its files even once the new one is armed (harvest_records).
        self.exited[pid].image.close()
        self.exited[pid].exec_ns = exec_ns

    def disarm(self, pid: int) -> None:
        """Stop harvesting `pid`; what BPF had not taken from a live
        process is copied from its rings now (BatchStream.finish)."""
        process = self.processes.pop(pid, None)
        if process is None:
            return
        self.exited[pid] = process
        alive = pid not in self.exec_pending and procs.process_exists(pid)
        self.stream.finish(pid, process.image if alive else None)

    def end(self, pid: int) -> None:
        """`pid` exited, its records delivered."""
        process = self.processes.get(pid)
        self.disarm(pid)
        if process is not None:
            process.image.close()
        for oldest in list(self.exited)[:-EXITED_KEPT]:
            self.forget(oldest)

    def take_over(self) -> None:
        """Nothing pinned to take over in batch mode."""

    # -- what the session asks ------------------------------------------------

    def traced_pids(self) -> set[int]:
        return set(self.processes) | self.exec_pending

    def comm_of(self, pid: int) -> str | None:
        process = self.processes.get(pid)
        return process.comm if process is not None else None

    def topic_names(self) -> set[str]:
        return {name for process in self.processes.values()
                for name in process.armed_topics}

    def topic_losses(self) -> dict[tuple[int, str], TopicLoss]:
        """Per (pid, topic name): streamed, overwritten, refused since
        armed; final after release()."""
        if self._final_losses is not None:
            return self._final_losses
        found: dict[tuple[int, str], TopicLoss] = {}
        for (pid, topic_id), loss in self.batch.losses().items():
            process = self.processes.get(pid) or self.exited.get(pid)
            topic = process.topics.get(topic_id) if process else None
            key = (pid, topic.name if topic else f"topic{topic_id}")
            # Two topics of one name in a process (a library's and the
            # program's, a fork's own): their records are that name's.
            found[key] = found[key] + loss if key in found else loss
        return found

    # -- records --------------------------------------------------------------

    def _on_topic(self, pid: int, topic: Topic) -> None:
        """BPF armed a topic registered after `pid` was armed."""
        process = self.processes.get(pid) or self.exited.get(pid)
        if process is not None:
            process.topics.setdefault(topic.id, topic)
            process.armed_topics.add(topic.name)
        self.seen_topics.add(topic.name)

    def _on_unnamed(self, pid: int, topic_id: int, name_at: int) -> None:
        """BPF could not read the name of topic `topic_id` of `pid` (its
        page not mapped there: a fork that never touched it). Read it through
        /proc/PID/mem, which maps the page, so BPF's next look reads it too;
        publish it if the spec arms it and no image had it."""
        with self.lock:
            process = self.processes.get(pid)
            if process is None:
                return
            name = process.image.string(name_at, NAME_MAX, cached=False)
            SESSION.record("batch: pid %d topic %d named %s from memory", pid,
                           topic_id, name if name is not None else "(unreadable)")
            if name and self.options.spec.armed(name):
                self.batch.arm_names([name])
                self.batch.look_again(pid)

    def _text(self, pid: int, address: int) -> str | None:
        """For a capture: the text at `address` in `pid` (a format or a
        location), read while we still can."""
        process = self.processes.get(pid) or self.exited.get(pid)
        return process.image.string(address) if process is not None else None

    def _on_record(self, cpu: int, raw: Any) -> None:
        self.emit(self.decode(cpu, raw))

    def decode(self, cpu: int, raw: Any) -> Record:
        return harvest_record(self.processes, self.exited, cpu, raw)

    def _entry_record(self, cpu: int, pid: int, comm: bytes,
                      entry: tuple[int, ...]) -> Record:
        return self.decode(cpu, BatchRecord(
            pid, comm, RawEntry(*entry[:10], entry[10:22]), []))

    def _chunk_process(self, pid: int) -> ArmedProcess | None:
        """The process whose image decodes a chunk of `pid` (None: the
        Record path decides, as around an exec, where time picks it)."""
        earlier = self.exited.get(pid)
        if earlier is not None and earlier.exec_ns is not None:
            return None
        return self.processes.get(pid) or self.exited.get(pid)

    def flight_records(self) -> list[Record]:
        return []       # no kernel flight ring: the processes' rings are it

    def site_stats(self) -> dict[Any, Any]:
        return {}

    def forget(self, pid: int, metrics: bool = True) -> None:
        process = self.exited.pop(pid, None)
        if process is not None:
            process.image.close()

    def close_images(self) -> None:
        for process in self.exited.values():
            process.image.close()

    unfinished_walks = 0    # final harvests that ended before a shard (batch.c)
    capped_processes = 0    # processes with more armed topics than batch.c holds

    def release(self) -> None:
        """Keep the loss counts, then free the stream and the program."""
        self._final_losses = self.topic_losses()
        with contextlib.suppress(Exception):   # a count: never in the way
            counters = self.batch.counters()
            self.unfinished_walks = sum(cpu.get("unfinished", 0) for cpu in counters)
            self.capped_processes = len(self.batch.capped_at_arm) + sum(
                cpu.get("capped", 0) for cpu in counters)
        self.stream.close()
        self.batch.close()
        if self.capture is not None:
            self.capture.close()
