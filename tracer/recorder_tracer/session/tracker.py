"""The one process tracker: which processes a session traces, and when
they start, exec and end.

It listens to the kernel's proc connector (target/procs.py): an EXEC of
a process the options want (--comm, --all) is armed at once, an EXEC of a
traced process is passed to the session's sources, an EXIT queued with
its status for the session loop, which delivers the process's last
records before reporting it. Without the connector, or when events are
lost, a periodic liveness check finds what ended.

`-c` is started one way: forked under ptrace and stopped at its exec,
when the executable (and ld.so) are mapped but nothing has run; the
session arms every source there, then the tracker lets it go. So the
command is traced from its first record, whichever probes it has.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from recorder_tracer.decode.reorder import monotonic_ns
from recorder_tracer.errors import TracerError
from recorder_tracer.session.options import TraceOptions
from recorder_tracer.target import cgroups, procs

if TYPE_CHECKING:
    from recorder_tracer.target.procs import ProcEvent

LIVENESS_INTERVAL_S = 0.5           # check that traced processes live this often
_PTRACE_TRACEME = 0
_PTRACE_DETACH = 17

Exit = tuple[int, str, int]         # pid, how it ended, when (ns, monotonic)


class ProcessTracker:
    """Follows processes for a session.

    `traced()` gives the pids traced now; `trace(pid)` arms a new one (False
    when it has nothing to arm); `on_exec(pid, started, exec_ns)` tells the
    sources a traced process exec'd (when: the kernel's CLOCK_MONOTONIC ns,
    the clock of entries). All three run under `lock`.
    """

    def __init__(self, options: TraceOptions, lock: threading.RLock,
                 traced: Callable[[], set[int]],
                 trace: Callable[[int], bool],
                 on_exec: Callable[[int, bool, int], None],
                 report: Callable[[str], None]) -> None:
        self.options = options
        self.lock = lock
        self.traced = traced
        self.trace = trace
        self.on_exec = on_exec
        self.report = report
        self.child: int | None = None       # the -c command until reaped
        # The -c command's pid, kept once reaped: its EXEC event can come
        # after waitpid (a busy follower thread), and must still be known
        # as the command's, not a traced process's new program.
        self.command: int | None = None
        self.child_status: int | None = None
        self._follower: Any = None
        self._exits: queue.SimpleQueue[Exit] = queue.SimpleQueue()
        self._rescan = threading.Event()
        self._next_liveness = 0.0
        self._gone: set[int] = set()    # found gone once (see check_alive)

    @property
    def following(self) -> bool:
        """True when new processes are wanted (--comm, --all, --cgroup)."""
        return (self.options.all_processes or bool(self.options.comms)
                or bool(self.options.cgroups))

    def wants(self, pid: int) -> bool:
        """True if the options pick `pid` (--all, its comm, its cgroup)."""
        if self.options.all_processes:
            return True
        if self.options.cgroups and cgroups.in_cgroups(pid, self.options.cgroups):
            return True
        if not self.options.comms:
            return False
        try:
            return procs.process_comm(pid) in self.options.comms
        except (procs.ProcessGone, OSError):
            return False

    # -- the proc connector ---------------------------------------------------

    def start(self) -> None:
        """Listen to the proc connector: new processes (--comm, --all) and
        exits with their status. Without it, exits are found by polling."""
        follower = procs.ProcessFollower(self._on_event)
        try:
            follower.start()
        except (OSError, TimeoutError) as error:
            if self.following:
                raise TracerError(f"cannot follow new processes: {error}") from None
            return
        self._follower = follower

    def stop(self) -> None:
        """Stop listening."""
        if self._follower is not None:
            self._follower.stop()
            self._follower = None

    def _on_event(self, event: ProcEvent) -> None:
        """In the follower's thread: arm a new process at once; leave an
        exit to the loop, which drains its records before reporting it."""
        if event.kind is procs.ProcEventKind.EXEC:
            try:
                self._on_exec(event.pid, event.timestamp)
            except Exception as error:
                # Raised here it would end the follower thread, and with it
                # following, silently: say so and go on with the next event.
                self.report(f"recorder: cannot trace new process {event.pid}: "
                            f"{error}")
        elif event.kind is procs.ProcEventKind.EXIT:
            if event.pid in self.traced():
                self._exits.put((event.pid, event.describe(), event.timestamp))
        elif event.kind is procs.ProcEventKind.OVERRUN:
            self._rescan.set()      # exits and execs were lost: look again

    def _on_exec(self, pid: int, exec_ns: int) -> None:
        with self.lock:
            if pid in self.traced():
                self.on_exec(pid, pid == self.command, exec_ns)
                return
            if self.wants(pid) and self.trace(pid):
                comm = "?"
                with contextlib.suppress(procs.ProcessGone, OSError):
                    comm = procs.process_comm(pid)
                self.report(f"tracing new process {pid} ({comm})")

    def scan(self) -> None:
        """Arm the wanted processes that run now and are not traced yet."""
        traced = self.traced()
        for pid in procs.all_pids():
            if pid != os.getpid() and pid not in traced and self.wants(pid):
                self.trace(pid)

    # -- ends -----------------------------------------------------------------

    def due(self, now: float) -> bool:
        """True when the periodic checks are due (or events were lost)."""
        if self._rescan.is_set() or now >= self._next_liveness:
            self._next_liveness = now + LIVENESS_INTERVAL_S
            return True
        return False

    def take_rescan(self) -> bool:
        """True once after events were lost: scan /proc again."""
        lost = self._rescan.is_set()
        self._rescan.clear()
        return lost

    def check_alive(self) -> None:
        """Queue the exit of traced processes that are gone, for when no exit
        event tells us: no proc connector, events lost, or an exit before
        the event could concern us (while arming). With the connector, a
        process must be found gone twice: its event, with the status, wins."""
        gone = {pid for pid in self.traced()
                if pid != self.child and not procs.process_alive(pid)}
        confirmed = gone if self._follower is None else gone & self._gone
        self._gone = gone - confirmed
        for pid in confirmed:
            self._exits.put((pid, "status unknown", monotonic_ns()))

    def exits(self) -> Iterator[Exit]:
        """The exits queued so far, and the -c command's once it is reaped."""
        while True:
            try:
                yield self._exits.get_nowait()
            except queue.Empty:
                break
        if self.child is not None:
            pid, status = os.waitpid(self.child, os.WNOHANG)
            if pid != 0:
                self.child, self.child_status = None, status
                yield pid, procs.describe_status(status), monotonic_ns()

    # -- -c -------------------------------------------------------------------

    def start_command(self, command: list[str], arm: Callable[[int], None]) -> int:
        """Start `command` stopped at its exec, `arm(pid)` it there, then let
        it run; it is killed if arming fails (never left waiting, or running
        untraced)."""
        path = shutil.which(command[0])
        if path is None:
            raise TracerError(f"command not found: {command[0]}")
        ptrace = _ptrace_function()
        stderr = self.options.command_stderr
        pid = os.fork()
        if pid == 0:    # the child: stop at exec for the tracer to arm us
            try:
                if stderr is not None:
                    os.dup2(stderr, 2)
                if ptrace(_PTRACE_TRACEME, 0, None, None) == 0:
                    os.execv(path, command)
            finally:
                os._exit(127)
        _, status = os.waitpid(pid, 0)
        if not (os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGTRAP):
            raise TracerError(f"cannot run {command[0]}: "
                              f"{procs.describe_status(status)}")
        self.child = self.command = pid
        try:
            arm(pid)
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            ptrace(_PTRACE_DETACH, pid, None, None)
            os.waitpid(pid, 0)
            self.child = self.command = None
            raise
        ptrace(_PTRACE_DETACH, pid, None, None)
        return pid


def _ptrace_function() -> Any:
    """libc's ptrace, loaded before fork so the child need not load it."""
    libc = ctypes.CDLL(None, use_errno=True)
    function = libc.ptrace
    function.restype = ctypes.c_long
    function.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p,
                         ctypes.c_void_p]
    return function
