"""Every record of every process a selection names: forks, short lives and
records made before arming (kernel/coverage.py does the kernel's part).

A followed process records before the session can arm it: a forked worker
before its arming, a process that lives a millisecond, a run-time topic
made while the trace runs. Records reach the session three ways, once each:

  live       the harvest program, once armed (the per-record trap)
  backfill   read from the process's rings when it is armed: entries
             stamped since it was followed (its fork, its exec, the trace's
             start)
  copy       made by BPF in the process's own context when it ends before
             it was armed

An entry is named by (pid, topic id, shard, sequence); `Delivered` keeps
recent names per process, and a way that brings an entry second drops it.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from recorder_tracer.abi import MAX_SHARDS
from recorder_tracer.decode.entry import entry_record
from recorder_tracer.decode.record import Record
from recorder_tracer.decode.reorder import oldest_mark
from recorder_tracer.kernel.coverage import (
    WATCH_ARMED,
    WATCH_NO_CORE,
    WATCH_PENDING,
    Copy,
    Coverage,
    Selection,
)
from recorder_tracer.selftrace import PROCS
from recorder_tracer.session.harvest_records import (
    captured_strings,
    copied_topic_names,
)
from recorder_tracer.target import procs
from recorder_tracer.target.memory import ProcessImage, load_segments
from recorder_tracer.target.rings import shard_window, topic_shards

if TYPE_CHECKING:
    from recorder_tracer.decode.reorder import ReorderBuffer
    from recorder_tracer.decode.spec import TopicSpec
    from recorder_tracer.session.options import TraceOptions

PENDING_HOLD_NS = 2_000_000_000    # hold output back this long at most for
                                   # a process not armed nor copied yet
WINDOW = 1 << 16                   # sequences kept per shard for dedup
EXECS_KEPT = 4096                  # exec'd processes' files kept for copies
READ_TIMEOUT_MS = 20               # the reading thread's wait, and so the
                                   # longest a sync() waits for it


class Delivered:
    """The entries delivered per process, as (topic, shard) -> (sequence,
    timestamp) pairs (the timestamp tells an exec'd program's entries from
    its predecessor's, which had the same sequences), each set trimmed to
    the last WINDOW sequences (no copy reaches further back than a ring's
    capacity)."""

    def __init__(self) -> None:
        self._seen: dict[int, dict[tuple[int, int], set[tuple[int, int]]]] = {}
        self._lock = threading.Lock()   # the follower's thread arms too

    def first(self, pid: int, entry: Any, shard: int) -> bool:
        """True the first time this entry comes (and remember it)."""
        with self._lock:
            shards = self._seen.setdefault(pid, {})
            seen = shards.setdefault((entry.topic_id, shard), set())
            key = (entry.sequence, entry.timestamp)
            if key in seen:
                return False
            seen.add(key)
            if len(seen) > 2 * WINDOW:
                floor = max(seen)[0] - WINDOW
                shards[(entry.topic_id, shard)] = {k for k in seen if k[0] > floor}
            return True

    def forget(self, pid: int) -> None:
        with self._lock:
            self._seen.pop(pid, None)


class SessionCoverage:
    """The session's side of coverage: arms what the kernel reports, and
    turns backfills and copies into records.

    `arm(pid, parent)` arms a forked (or, parent None, exec'd) process
    (topics and USDT; False if it has none); `image_of(pid)` finds a known
    process's image. Records wait in `ready` for the session's poll()."""

    def __init__(self, selection: Selection, spec: TopicSpec,
                 arm: Callable[[int, int | None], bool], image_of: Callable[[int], Any],
                 report: Callable[[str], None], records: bool = True,
                 start_ns: int = 0) -> None:
        self.spec = spec
        self.start_ns = start_ns    # the trace's: backfill no further back
        self._arm = arm
        self._image_of = image_of
        self.report = report
        self.records = records      # False: metrics only, no backfill
        self.kernel = Coverage(selection, self, copies=records)
        self.delivered = Delivered()
        self.ready: queue.SimpleQueue[Record] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._reading = threading.Lock()    # one reader of the kernel's rings
        self.pending: dict[int, int] = {}       # pid -> since, not armed yet
        # Every report committed before it is handled (its forks pending or
        # armed, its records in `ready`); None: not yet.
        self.drained_ns: int | None = None
        self._execs: dict[int, tuple[str, int]] = {}   # pid -> file, start_code
        self.backfilled = 0
        self.copied = 0
        # ns from a fork or exec to the process armed (bench/coverage_bench.py)
        self.arm_latency: dict[str, list[int]] = {"fork": [], "exec": []}
        self.copy_ns = 0            # time BPF spent copying at ends
        self.overwritten = 0
        self.copy_lost = 0

    # -- the session tells ---------------------------------------------------

    def follow(self, pid: int, registry: int, since: int) -> None:
        """Follow a process the session names (-p, -c) from `since`."""
        self.kernel.follow(pid, registry, since)

    def armed(self, process: Any) -> None:
        """`process` (an ArmedProcess) was just armed: backfill what it
        recorded since it was followed, then stop the copy at its end."""
        watch = self.kernel.watch_of(process.pid)
        self.pending.pop(process.pid, None)
        if watch is None:
            # Found by a scan: followed from now on, so that what it forks
            # is followed (with its registry) too.
            self.kernel.follow(process.pid, process.image.find_registry() or 0,
                               since=self.start_ns, state=WATCH_ARMED)
            return
        registry, since, state, parent = watch
        if state == WATCH_PENDING and since and since != self.start_ns:
            self.arm_latency["fork" if parent else "exec"].append(
                time.clock_gettime_ns(time.CLOCK_MONOTONIC) - since)
        if self.records and since:
            self._backfill(process, since)
        self.kernel.set_state(process.pid, WATCH_ARMED,
                              registry or process.image.find_registry() or 0)

    def found_core(self, process: Any) -> None:
        """Tell the kernel where `process`'s registry is, once its core is
        loaded (a Python import after exec): its end is then copied."""
        watch = self.kernel.watch_of(process.pid)
        if watch is not None and not watch[0]:
            registry = process.image.find_registry()
            if registry:
                self.kernel.set_state(process.pid, watch[2], registry)

    def backfill_topic(self, process: Any, topic: Any) -> None:
        """A run-time topic of an armed process was just armed: deliver its
        records since the process was followed (its first ones, made
        before the rescan found the topic)."""
        watch = self.kernel.watch_of(process.pid)
        if self.records and watch is not None and watch[1]:
            self._backfill(process, watch[1], [topic])

    def not_armed(self, pid: int) -> None:
        """`pid` has no recorder core (yet): no copy at its end."""
        self.pending.pop(pid, None)
        self.kernel.set_state(pid, WATCH_NO_CORE)

    def live(self, pid: int, entry: Any) -> bool:
        """A record of the live stream: False if it came another way."""
        return self.delivered.first(pid, entry, entry.cpu % MAX_SHARDS)

    def hold_until(self) -> int | None:
        """Records stamped from here on wait: a process not yet armed nor
        copied may still bring older ones."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        pending = dict(self.pending)    # the coverage thread adds to it
        for pid, since in pending.items():
            if now - since > PENDING_HOLD_NS:
                self.pending.pop(pid, None)
        waiting = [since for since in pending.values()
                   if now - since <= PENDING_HOLD_NS]
        return min(waiting) - 1 if waiting else None

    def start(self) -> None:
        """Read the kernel's reports in a thread of our own: a fork is armed
        within the arming's own time, not the session loop's poll."""
        self._thread = threading.Thread(target=self._read, daemon=True,
                                        name="recorder-coverage")
        self._thread.start()

    def _read(self) -> None:
        while not self._stopping.is_set():
            with self._reading:
                self.kernel.poll(READ_TIMEOUT_MS)
            self.sync()

    def sync(self) -> None:
        """Handle what the kernel reported up to now, in this thread."""
        with self._reading:
            started = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            self.kernel.poll(0)     # bcc reads each ring empty
            self.drained_ns = started

    def stop(self) -> None:
        """Stop the reading thread (sync() still reads)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def poll(self) -> list[Record]:
        """The records backfilled or copied since the last call."""
        if self._thread is None:
            self.sync()
        out = []
        while True:
            try:
                out.append(self.ready.get_nowait())
            except queue.Empty:
                return out

    def forget(self, pid: int) -> None:
        self.delivered.forget(pid)
        self._execs.pop(pid, None)
        self.pending.pop(pid, None)

    def close(self) -> None:
        self.stop()
        self.kernel.close()

    # -- the kernel tells (coverage.Handler) ----------------------------------

    def on_fork(self, pid: int, parent: int, time_ns: int, registry: int) -> None:
        self.pending[pid] = time_ns
        PROCS.record("followed fork %d of %d", pid, parent)
        if not self._arm(pid, parent):
            self.pending.pop(pid, None)

    def on_exec(self, pid: int, time_ns: int, comm: str, filename: str,
                start_code: int) -> None:
        self._execs[pid] = (filename, start_code)
        while len(self._execs) > EXECS_KEPT:      # --all: every exec
            self._execs.pop(next(iter(self._execs)))
        # Named by the selection, or a followed process's new program: armed
        # here at once (the proc connector's event comes later).
        self._arm(pid, None)

    def on_copy(self, copy: Copy) -> None:
        self.pending.pop(copy.pid, None)
        self.copy_lost += copy.lost
        self.copy_ns += copy.end_ns - copy.time_ns
        self.overwritten += copy.overwritten
        if not self.records:
            return
        live = self._image_of(copy.pid)
        image = self._copy_image(copy)
        try:
            self._deliver_copy(copy, image)
        finally:
            if live is None:
                # Never armed: nothing of it can come live, so nothing to
                # tell apart any more (--all would grow with every job).
                self.delivered.forget(copy.pid)

    def _deliver_copy(self, copy: Copy, image: ProcessImage | None) -> None:
        names = copied_topic_names(copy, image)
        for copied in copy.entries:
            entry = copied.entry
            if image is not None:
                # Read while it lived: records of it still in the stream
                # are decoded with these once its memory is gone.
                image.remember(entry.format, copied.format or None)
                image.remember(entry.where, copied.where or None)
            name = names.get(entry.topic_id, f"topic{entry.topic_id}")
            if not self.spec.armed(name):
                continue
            if not self.delivered.first(copy.pid, entry, entry.shard):
                continue
            texts = {entry.format: copied.format or None,
                     entry.where: copied.where or None}

            def text(address: int, texts: dict[int, str | None] = texts) -> str | None:
                found = texts.get(address)
                return found if found is not None or image is None \
                    else image.string(address)
            self.ready.put(entry_record(
                entry, pid=copy.pid, comm=copy.comm, topic=name, text=text,
                string=captured_strings(copied.strings, image)))
            self.copied += 1

    # -- backfill and images ---------------------------------------------------

    def _backfill(self, process: Any, since: int,
                  topics: list[Any] | None = None) -> None:
        image = process.image
        if topics is None:
            try:
                topics = image.topics()
            except OSError:
                return
        for topic in topics:
            if not self.spec.armed(topic.name):
                continue
            for slot, shard in topic_shards(image.read, topic):
                for entry in shard_window(image.read, shard, 1 << 30, slot):
                    if entry.timestamp < since or not self.delivered.first(
                            process.pid, entry, slot):
                        continue
                    self.ready.put(entry_record(
                        entry, pid=process.pid, comm=process.comm,
                        topic=topic.name, text=image.string,
                        string=lambda address: image.string(address, cached=False),
                        ns_pid=getattr(process, "ns_pid", None)))
                    self.backfilled += 1

    def _copy_image(self, copy: Copy) -> ProcessImage | None:
        """Where a copied process's formats can be read: its own image if it
        was seen, its parent's for a fork (the same memory), else its
        executable's file at the load bias its start_code gives."""
        own = self._image_of(copy.pid)
        if own is not None and own.bound_ns is not None and own.bound_ns >= copy.since:
            return own      # not a program it exec'd away from since
        parent = self._image_of(copy.parent) if copy.parent else None
        if (parent is not None and parent.bound_ns is not None
                and parent.bound_ns <= copy.since):
            return parent   # the program it forked from, not one exec'd later

        known = self._execs.pop(copy.pid, None)
        if known is None:
            return None
        filename, start_code = known
        path = os.path.abspath(filename)
        segments = [s for s in load_segments(path) if s.executable]
        if not segments:
            return None
        image = ProcessImage.offline(copy.pid, [])
        image.add_file(path, start_code - min(s.address for s in segments))
        return image


class CoverageSteps:
    """A trace session's (session/loop.py) coverage steps: start it, take
    its records, hold output back for the processes it waits for, and let
    records go once every source was read empty after them."""

    options: TraceOptions
    coverage: SessionCoverage | None
    reorder: ReorderBuffer
    report: Callable[[str], None]
    _lock: threading.RLock
    _start_ns: int
    processes: dict[int, Any]
    exited: dict[int, Any]
    traced_pids: Callable[[], set[int]]
    trace_process: Callable[..., bool]
    tracker: Any
    _streams: Callable[[], list[Any]]

    def _start_coverage(self) -> None:
        """Follow the selection in the kernel: forks, execs, and copies of
        what processes recorded before they could be armed."""
        options = self.options
        selection = Selection(all_processes=options.all_processes,
                              comms=list(options.comms),
                              cgroups=list(options.cgroups),
                              children=options.children)

        def image_of(pid: int) -> ProcessImage | None:
            process = self.processes.get(pid) or self.exited.get(pid)
            return process.image if process is not None else None

        def arm(pid: int, parent: int | None) -> bool:
            try:
                with self._lock:
                    if pid in self.traced_pids():
                        return True
                    armed = self.trace_process(pid, required=False)
            except Exception as error:
                # As the tracker's follower: raised here it would end the
                # coverage thread, and following with it, silently.
                self.report(f"recorder: cannot trace new process {pid}: "
                            f"{error}")
                return False
            if armed:
                forked = f", forked by {parent}" if parent else ""
                self.report(f"tracing new process {pid} ({_comm(pid)})"
                            f"{forked}")
            return armed

        self.coverage = SessionCoverage(
            selection, options.spec, arm, image_of, self.report,
            # The batch harvest reads the rings by sequence itself: there,
            # coverage follows forks and execs only (no backfill, no copy).
            records=options.topics and not options.metrics_only
            and not options.batch,
            start_ns=self._start_ns)
        self.coverage.start()

    def _poll_coverage(self, sync: bool = False) -> None:
        """Take the records backfilled and copied; with `sync`, read what
        the kernel reported up to now first."""
        if self.coverage is None:
            return
        if sync:
            self.coverage.sync()
        drained = self.coverage.drained_ns      # before taking what it covers
        for record in self.coverage.poll():
            self.reorder.push(record)
        self._coverage_drained = drained

    _coverage_drained: int | None = None   # as of the records taken

    def _drained_ns(self) -> int | None:
        """When every stream and coverage report was last read empty (the
        oldest mark); None: not known, the window alone decides."""
        if self.tracker.following and self.coverage is None:
            return None     # the proc connector arms late, with backfills
        marks = [stream.drained_ns for stream in self._streams()]
        return oldest_mark(marks if self.coverage is None
                           else [*marks, self._coverage_drained])

    def _wait_ms(self, timeout_ms: int) -> int:
        """The next poll's wait, by the bound _flush() applies."""
        if self.coverage is not None and self.coverage.hold_until() is not None:
            return timeout_ms       # a process to arm decides, not the clock
        return self.reorder.wait_ms(timeout_ms, self._drained_ns() is not None)

    def _flush(self, until: int | None = None) -> None:
        """Deliver what the reorder buffer lets go (or up to `until`), but
        nothing newer than a process still to be armed or copied could
        bring."""
        hold = self.coverage.hold_until() if self.coverage is not None else None
        if until is None:
            until = self.reorder.ready_until(self._drained_ns())
        self.reorder.flush(until_ns=until if hold is None else min(until, hold))

def _comm(pid: int) -> str:
    try:
        return procs.process_comm(pid)
    except (procs.ProcessGone, OSError):
        return "?"
