"""A trace session: arm sources in processes, follow them, emit records.

    session = TraceSession(options, sink)
    session.run()            # until the duration, Ctrl-C, or the targets end
    session.summaries()      # per-CPU produced / received / lost

or, driving the loop yourself:

    session.start()
    while session.poll(timeout_ms=50):
        ...
    session.close()

The session arms each traced process in every source (session/source.py):
recorder topics (session/topics.py) and, with `options.usdt`, other
programs' USDT probes (session/usdt.py). The process tracker
(session/tracker.py) says which processes start, exec and end. Every
source's stream is polled in the same loop and their records go through
one reorder buffer into one sink, in timestamp order across processes,
CPUs and programs (decode/reorder.py). A record leaves it once every
stream and the coverage reports were read empty after its timestamp (less
a margin), not a fixed window later: then nothing older can still come.

A traced process that exits is normal: the session drains what it recorded,
reports "process PID (comm) exited: STATUS", and still decodes its records
from its files. With only -p targets, the session ends with the last one.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from recorder_tracer.decode.record import Record
from recorder_tracer.decode.reorder import (
    REORDER_WINDOW_NS,
    ReorderBuffer,
    monotonic_ns,
)
from recorder_tracer.errors import TracerError
from recorder_tracer.kernel.harvest import Harvester, SiteKey, SiteStats
from recorder_tracer.kernel.stream import CpuSummary, Stream
from recorder_tracer.selftrace import PROCS, SESSION
from recorder_tracer.session.armed import ArmedProcess
from recorder_tracer.session.coverage import CoverageSteps, SessionCoverage
from recorder_tracer.session.options import TraceOptions
from recorder_tracer.session.results import SessionResults
from recorder_tracer.session.source import Source
from recorder_tracer.session.topics import RecorderTopics
from recorder_tracer.session.tracker import ProcessTracker

if TYPE_CHECKING:
    from recorder_tracer.output.chrome_plans import ChromePlans
    from recorder_tracer.output.json_plans import JsonPlans
    from recorder_tracer.output.text_plans import TextPlans
    from recorder_tracer.postmortem.snapshot import SnapshotWatcher
    from recorder_tracer.session.usdt import UsdtSource

__all__ = ["REORDER_WINDOW_NS", "TraceOptions", "TraceSession", "monotonic_ns",
           "poll_streams", "stop_on_signals"]

Sink = Callable[[Record], None]
Reporter = Callable[[str], None]


class TraceSession(SessionResults, CoverageSteps):
    """Arms, streams, reorders; the CLI renders what `sink` gets (`lines`: its line
    plans). `stopping`: the event stop() sets (the CLI's: Ctrl-C in start-up too)."""

    def __init__(self, options: TraceOptions, sink: Sink,
                 report: Reporter = lambda message: None,
                 stopping: threading.Event | None = None,
                 lines: JsonPlans | TextPlans | ChromePlans | None = None) -> None:
        if not (options.topics or options.usdt):
            raise TracerError("nothing to trace: no topics and no USDT probe")
        self.options = options
        self.sink = sink
        self.report = report
        self.reorder = ReorderBuffer(sink, between_batches=self._while_flooded,
                                     lines=lines and lines.write_lines)
        self._stop = stopping if stopping is not None else threading.Event()
        self._lock = threading.RLock()  # the follower's thread arms too
        self._deadline: float | None = None
        self._final_summaries: list[CpuSummary] | None = None
        self._final_stats: dict[SiteKey, SiteStats] | None = None
        self.recorder: RecorderTopics | None = None
        self.usdt: UsdtSource | None = None
        self.sources: list[Source] = []
        self.snapshots: SnapshotWatcher | None = None
        self.coverage: SessionCoverage | None = None
        self._start_ns = monotonic_ns()
        self.tracker = ProcessTracker(
            options, self._lock, self.traced_pids,
            lambda pid: self.trace_process(pid, required=False),
            self._on_exec, report)
        if options.batch:
            from recorder_tracer.session.batch_topics import BatchTopics
            self.recorder = BatchTopics(options, self.reorder, report,
                                        self._lock, lines)  # type: ignore[assignment]
            self.sources.append(self.recorder)
        elif options.topics:
            self.recorder = RecorderTopics(options, self.reorder.push, report,
                                           self._lock)
            self.sources.append(self.recorder)
        if options.usdt:
            from recorder_tracer.session.usdt import UsdtSource
            self.usdt = UsdtSource(list(options.usdt), self.reorder.push, report,
                                   pages_per_cpu=options.pages_per_cpu)
            self.sources.append(self.usdt)

    # -- what is traced -------------------------------------------------------

    @property
    def processes(self) -> dict[int, ArmedProcess]:
        """Processes whose recorder topics are armed now."""
        return self.recorder.processes if self.recorder is not None else {}

    @property
    def exited(self) -> dict[int, ArmedProcess]:
        """Processes whose recorder topics were armed, kept for decoding."""
        return self.recorder.exited if self.recorder is not None else {}

    @property
    def harvester(self) -> Harvester | None:
        """The harvest program, when recorder topics are traced."""
        return self.recorder.harvester if self.recorder is not None else None

    @property
    def stream(self) -> Stream | None:
        """The harvest program's stream (None: metrics only, or no topics)."""
        return self.recorder.stream if self.recorder is not None else None

    @property
    def lock(self) -> threading.RLock:
        """Held while arming, disarming or forgetting: for other threads."""
        return self._lock

    @property
    def child_status(self) -> int | None:
        """The -c command's wait status once it has ended."""
        return self.tracker.child_status

    def trace_process(self, pid: int, required: bool = True) -> bool:
        """Arm what the options select in `pid`: its recorder topics and the
        USDT probes. False when it has none of them (an error when
        `required`)."""
        with self._lock:
            armed = False
            for source in self.sources:
                armed = source.arm(pid, required=required) is not None or armed
            return armed

    def disarm(self, pid: int) -> None:
        """Detach every probe of `pid`, in every source."""
        with self._lock:
            for source in self.sources:
                source.disarm(pid)

    def traced_pids(self) -> set[int]:
        """The processes traced now (topics or USDT probes armed)."""
        pids: set[int] = set()
        for source in self.sources:
            pids |= source.traced_pids()
        return pids

    def topic_names(self) -> set[str]:
        """The names records can carry now: armed topics and USDT probes."""
        names: set[str] = set()
        for source in self.sources:
            names |= source.topic_names()
        return names

    def _on_exec(self, pid: int, started: bool, exec_ns: int) -> None:
        for source in self.sources:
            source.on_exec(pid, started, exec_ns)

    # -- running --------------------------------------------------------------

    def start(self) -> None:
        """Arm the chosen processes and start following new ones."""
        if self.options.duration:
            self._deadline = time.monotonic() + self.options.duration
        SESSION.record("starting: %d pids, command %d, following %d",
                       len(self.options.pids), bool(self.options.command),
                       self.tracker.following)
        self.tracker.start()
        from recorder_tracer.kernel.coverage import kernel_follows_forks
        if kernel_follows_forks():
            self._start_coverage()
            if isinstance(self.recorder, RecorderTopics):
                self.recorder.coverage = self.coverage
            if self.usdt is not None and self.tracker.following:
                # Foreign probes by file, for every process: a server's forked
                # workers fire them before any per-PID attach could be made.
                self.usdt.follow_system_wide(list(self.options.comms),
                                             self.options.all_processes,
                                             list(self.options.pids))
        if self.options.snapshots is not None:
            self._start_snapshots()
        for pid in self.options.pids:
            if self.coverage is not None:
                self.coverage.follow(pid, 0, self._start_ns)
            self.trace_process(pid)
        if self.tracker.following:
            self.tracker.scan()
        if self.options.command:
            with self._lock:    # its EXEC event must find it armed
                self.tracker.start_command(self.options.command, self._arm_started)
        if self.recorder is not None:
            self.recorder.take_over()
            for item in self.options.spec.unmatched(sorted(self.recorder.seen_topics)):
                self.report(f"spec item {item!r} matches no topic yet; "
                            "waiting for one")

    def _arm_started(self, pid: int) -> None:
        """Arm the -c command, stopped at its exec, in every source."""
        if self.coverage is not None:
            self.coverage.follow(pid, 0, monotonic_ns())
        for source in self.sources:
            source.arm(pid, required=True, started=True)

    def _start_snapshots(self) -> None:
        from recorder_tracer.postmortem.snapshot import start_watcher
        assert self.options.snapshots is not None
        pins = self.recorder.pins if self.recorder is not None else None
        self.snapshots = start_watcher(self.options.snapshots, pins, self.report)

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
        # Copies first: a process that ended left its formats there, for
        # its records still in the streams.
        self._poll_coverage()
        streams = self._streams()
        if streams:
            poll_streams(streams, self._wait_ms(timeout_ms))
        else:       # metrics only: the kernel aggregates, nothing to read
            self._stop.wait(timeout_ms / 1000)
        if self.tracker.due(time.monotonic()):
            self.tracker.check_alive()
            for source in self.sources:
                source.rescan()
            if self.tracker.take_rescan() and self.tracker.following:
                self.tracker.scan()
        self._poll_coverage()
        for pid, status, when_ns in self.tracker.exits():
            self._end_process(pid, status, when_ns)
        self._flush()
        self._report_snapshots()    # after exits: a crashed -p process's too
        return not self._ended()

    def _report_snapshots(self) -> None:
        if self.snapshots is not None:      # its capture precedes its exit
            self.snapshots.report_written(self.report)

    def _while_flooded(self) -> None:
        """Every few thousand records, inside a stream's callback: poll()
        may not return while a flood lasts, so records leave from here, and
        a stop (or the end of the duration) detaches every probe, which
        ends the flood and lets poll() return."""
        self._flush()
        if self._requested_end():
            self._disarm_all()

    def _disarm_all(self) -> None:
        with self._lock:
            for pid in self.traced_pids():
                self.disarm(pid)
            if self.usdt is not None:
                self.usdt.disarm_all()

    def _requested_end(self) -> bool:
        return self._stop.is_set() or (self._deadline is not None and
                                       time.monotonic() >= self._deadline)

    def _ended(self) -> bool:
        if self._requested_end() or self.tracker.child_status is not None:
            return True
        only_pids = not (self.tracker.following or self.options.command)
        return only_pids and not self.traced_pids()

    def run(self, start: bool = True) -> None:
        """Stream until the duration ends, stop(), SIGINT/SIGTERM or the targets
        end (poll()); `start` False: done. Drains at the end; no GC after start()."""
        with stop_on_signals(self._stop):
            try:
                if start:
                    self.start()
            except BaseException:
                self.close()
                raise
            with collections_paused() as collect_when_due:
                try:
                    self._flush()   # what arming read: out before a wait
                    while self.poll(timeout_ms=50):
                        collect_when_due()
                finally:
                    self.close()

    def _end_process(self, pid: int, status: str, when_ns: int) -> None:
        """Deliver what `pid` recorded up to its exit, say so, detach it."""
        # Outside the lock: the coverage thread arms (under it) as it reads.
        self._poll_coverage(sync=True)
        with self._lock:
            comm = next((name for source in self.sources
                         if (name := source.comm_of(pid)) is not None), None)
            if comm is None:
                return              # reported already (exit event and waitpid)
            for stream in self._streams():  # others live on: no final read
                getattr(stream, "catch_up", stream.drain)()
            self._poll_coverage()
            self._flush(when_ns)
            self.report(f"process {pid} ({comm}) exited: {status}")
            PROCS.record("pid %d (%s) exited: %s", pid, comm, status)
            for source in self.sources:
                source.end(pid)
            if self.coverage is not None:
                self.coverage.forget(pid)

    def _streams(self) -> list[Stream]:
        return [stream for source in self.sources for stream in source.streams]

    def close(self) -> None:
        """Detach everything, drain the streams, emit what is left. Every
        step runs even if one before it raised (links and pins must not
        outlive a failed drain); the first error is raised at the end."""
        failures: list[Exception] = []

        def step(action: Callable[[], object]) -> None:
            try:
                action()
            except Exception as error:
                failures.append(error)

        step(self.tracker.stop)
        if self.coverage is not None:
            step(self.coverage.stop)
        step(self._disarm_all)
        for stream in self._streams():
            step(stream.drain)
        step(lambda: self._poll_coverage(sync=True))
        step(self.reorder.flush_all)
        step(self._report_snapshots)    # captures of the last moments
        if self.recorder is not None:
            step(self.recorder.close_images)
        # The totals need the maps: keep them, then free every kernel object.
        step(self._keep_totals)
        if self.snapshots is not None:
            step(self.snapshots.close)
        if self.coverage is not None:
            step(self.coverage.close)
        for source in self.sources:
            step(source.release)
        self._record_totals()
        if failures:
            raise failures[0]


@contextlib.contextmanager
def stop_on_signals(
        stopping: threading.Event | None = None) -> Iterator[threading.Event]:
    """While inside, SIGINT and SIGTERM set `stopping` (made if not given)
    instead of raising KeyboardInterrupt or ending the process; the previous
    handlers come back on exit. Outside the main thread, it does nothing.

    A KeyboardInterrupt raised inside bcc's ctypes perf-buffer callback is
    printed and swallowed, so a loop would miss Ctrl-C; a flag cannot be
    missed, and the loop then detaches, drains and summarises.

    >>> import os
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


GC_PERIOD_S = 10.0


@contextlib.contextmanager
def collections_paused() -> Iterator[Callable[[], None]]:
    """Python's cyclic collector off while a session streams (at 500 k
    records/s it ran ~1,100 times in a 2 s trace, for tuples and strings
    that make no cycles); yields a call that runs a full pass (5-38 ms) once
    GC_PERIOD_S have passed: run() calls it between polls, less often while
    a flood keeps poll() from returning. What is alive on entry (start-up's,
    in run()) is frozen out of those passes, unless the host application
    froze objects itself (gc.unfreeze() would thaw its too). gc.disable()
    is process-wide: the host's other threads go uncollected meanwhile."""
    if not gc.isenabled():
        yield lambda: None
        return
    ours = gc.get_freeze_count() == 0
    if ours:
        gc.freeze()
    gc.disable()
    due = [time.monotonic() + GC_PERIOD_S]

    def collect_when_due() -> None:
        if time.monotonic() >= due[0]:
            gc.collect()
            due[0] = time.monotonic() + GC_PERIOD_S
    try:
        yield collect_when_due
    finally:
        gc.enable()
        if ours:
            gc.unfreeze()


def poll_streams(streams: list[Stream], timeout_ms: int) -> None:
    """Wait up to `timeout_ms` in all for records of `streams`, delivering
    what each holds. Each stream waits its share in turn (through its own
    poll(), whatever buffers it reads), so a record waits at most about
    `timeout_ms` before it is read, whichever program sent it."""
    share = max(1, timeout_ms // max(1, len(streams))) if timeout_ms > 0 else 0
    for stream in streams:
        stream.poll(timeout_ms=share)
