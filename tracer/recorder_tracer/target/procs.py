"""Processes: who runs, and a follower of EXEC and EXIT from the proc connector.

`ProcessFollower` listens on the kernel's proc connector (netlink,
CONFIG_PROC_EVENTS) through pyroute2's `ProcEventSocket` and hands each EXEC
and EXIT to a callback or a queue, so the controller can arm a program that
starts and forget one that ends.

pyroute2 0.9 runs each socket on an asyncio loop, and its socket, loop and
message queue are thread-local: the socket is created, bound, read and finally
closed in the follower's own thread. `stop()` calls `close()` from the caller's
thread, which is the cross-thread wake-up pyroute2 provides: it queues an
empty message on the reader's loop, so the blocking `get()` returns `()`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar


class ProcessGone(LookupError):
    """The process does not exist (any more)."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"process {pid} does not exist")
        self.pid = pid


def process_exists(pid: int) -> bool:
    """Tell whether process `pid` exists (zombies count until reaped).

    >>> process_exists(os.getpid())
    True
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat's
    field 22), None if it is gone: a pid and its start time name one
    process, even after the pid is reused.

    >>> start_time(os.getpid()) == start_time(os.getpid()) is not None
    True
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # After the command (in parentheses, any bytes): fields 3 onward.
            return int(stat.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def process_comm(pid: int) -> str:
    """Return the command name of process `pid` (its /proc/PID/comm).

    Raises ProcessGone when the process does not exist.

    >>> from pathlib import Path
    >>> process_comm(os.getpid()) == Path("/proc/self/comm").read_text().strip()
    True
    """
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as file:
            return file.read().rstrip("\n")
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid) from None


def namespace_pid(pid: int) -> int | None:
    """`pid`'s pid in its own PID namespace when that is not ours (a
    container's), else None (also for a process gone)."""
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith("NSpid:"):
                    pids = line.split()[1:]
                    return int(pids[-1]) if len(pids) > 1 else None
    except (OSError, ValueError):
        pass
    return None


def describe_exit(status: int) -> tuple[int | None, int | None, bool]:
    """Decode a wait status into (exit code, killing signal, core dumped).

    Exactly one of the first two is set.

    >>> describe_exit(3 << 8)
    (3, None, False)
    >>> describe_exit(9)
    (None, 9, False)
    >>> describe_exit(0x80 | 11)
    (None, 11, True)
    """
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status), os.WCOREDUMP(status)
    return os.WEXITSTATUS(status), None, False


def describe_ending(code: int | None, killer: int | None, core: bool) -> str:
    """The one wording of how a process ended, everywhere it is shown
    (trace's "process 42 (app) exited: exit code 3", snapshot files).

    >>> describe_ending(3, None, False), describe_ending(None, 11, True)
    ('exit code 3', 'killed by SIGSEGV (core dumped)')
    """
    if killer is None:
        return f"exit code {code}"
    try:
        name = signal.Signals(killer).name
    except ValueError:
        name = f"signal {killer}"
    return f"killed by {name}{' (core dumped)' if core else ''}"


def describe_status(status: int) -> str:
    """How a process ended, from its wait status.

    >>> describe_status(3 << 8), describe_status(0x80 | 11)
    ('exit code 3', 'killed by SIGSEGV (core dumped)')
    """
    return describe_ending(*describe_exit(status))


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def all_pids() -> list[int]:
    """Every process running now."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


class ProcEventKind(Enum):
    """What happened to a process."""

    EXEC = "exec"
    EXIT = "exit"
    OVERRUN = "overrun"     # the kernel dropped events: rescan /proc


@dataclass(frozen=True)
class ProcEvent:
    """One EXEC or EXIT of a process, as the proc connector reports it.

    `timestamp` is the kernel's ktime_get_ns() (CLOCK_MONOTONIC, the clock of
    records). EXEC carries `comm`, read from /proc after the event (None when
    the process was already gone). EXIT carries `exit_code` or `signal`.
    OVERRUN (pid 0) says that `lost` events were dropped before this point.
    """

    kind: ProcEventKind
    pid: int
    timestamp: int
    comm: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    core_dumped: bool = False
    parent_pid: int | None = None
    lost: int = 0

    def describe(self) -> str:
        """Say in a few words how the process ended or what it runs.

        >>> ProcEvent(ProcEventKind.EXIT, 42, 0, signal=9).describe()
        'killed by SIGKILL'
        >>> ProcEvent(ProcEventKind.EXIT, 42, 0, exit_code=3).describe()
        'exit code 3'
        """
        if self.kind is ProcEventKind.EXEC:
            return f"exec {self.comm or '?'}"
        if self.kind is ProcEventKind.OVERRUN:
            return f"{self.lost} process events lost"
        return describe_ending(self.exit_code, self.signal, self.core_dumped)


EventSink = Callable[[ProcEvent], None]


class ProcessFollower:
    """Deliver EXEC and EXIT events of every process on the host.

    Events go to `callback` (called in the follower's thread) or, without
    one, to the queue `events`. Use it as a context manager, or call
    `start()` and `stop()`. Needs root (CAP_NET_ADMIN) on older kernels.

    When the socket's buffer (`receive_buffer` bytes, pyroute2's 1 MiB by
    default) overflows, the kernel drops events: the follower counts them
    in `lost` and delivers an OVERRUN event saying how many, so the
    consumer can rescan /proc for what it missed.

    >>> with ProcessFollower() as follower:          # doctest: +SKIP
    ...     event = follower.events.get(timeout=5)
    """

    def __init__(self, callback: EventSink | None = None,
                 receive_buffer: int | None = None) -> None:
        self.events: queue.Queue[ProcEvent] = queue.Queue()
        self.receive_buffer = receive_buffer
        self.lost = 0
        self._sink: EventSink = callback if callback is not None else self.events.put
        self._thread: threading.Thread | None = None
        self._socket: Any = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._error: BaseException | None = None

    def __enter__(self) -> ProcessFollower:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while the reader thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 5.0) -> None:
        """Start listening; return once the kernel sends events to us.

        Raises what subscribing raised (e.g. PermissionError), in this thread.
        """
        if self._thread is not None:
            raise RuntimeError("ProcessFollower already started")
        self._thread = threading.Thread(
            target=self._run, name="recorder-procs", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError("proc connector did not answer")
        if self._error is not None:
            error, self._error = self._error, None
            self._thread.join()
            raise error

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and join the thread; re-raise a callback's error."""
        self._stopping.set()
        with self._lock:
            sock = self._socket
        if sock is not None:
            sock.close()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        try:
            sock = _subscribe(self.receive_buffer)
        except BaseException as error:
            self._error = error
            self._ready.set()
            return
        with self._lock:
            self._socket = sock
        self._ready.set()
        sequences = _Sequences()
        try:
            while not self._stopping.is_set():
                try:
                    messages = sock.get()
                except Exception:
                    if self._stopping.is_set():
                        break   # closed by stop() between two get() calls
                    raise
                if not messages:
                    break       # stop()'s wake-up
                for message in messages:
                    lost = sequences.lost(message)
                    if lost:
                        self.lost += lost
                        self._sink(ProcEvent(ProcEventKind.OVERRUN, 0,
                                             message["timestamp_ns"], lost=lost))
                    event = _decode(message)
                    if event is not None:
                        self._sink(event)
        except BaseException as error:
            self._error = error
        finally:
            with self._lock:
                self._socket = None
            # The second close, in this thread, closes this thread's loop. When
            # stop()'s close raced a get(), pyroute2 re-raises that get()'s
            # EBADF here: the socket is closed all the same.
            with contextlib.suppress(OSError):
                sock.close()
            _close_thread_loop(sock)


def _close_thread_loop(sock: Any) -> None:
    """Close the asyncio loop pyroute2 made for this thread. Its own close
    skips it when stop() woke a get() midway, which left an epoll fd and a
    socket pair behind per follower (seen: 3 fds per trace session)."""
    local = getattr(getattr(sock, "asyncore", None), "local", None)
    loop = getattr(local, "event_loop", None)
    if loop is not None and not loop.is_closed():
        with contextlib.suppress(Exception):
            loop.close()


class _Sequences:
    """Counts the events the kernel dropped for us, from sequence numbers.

    The proc connector numbers events per CPU (cn_msg.seq, under a per-CPU
    lock, so each CPU's events reach us in order): a jump is a loss.
    """

    def __init__(self) -> None:
        self.expected: dict[int, int] = {}

    def lost(self, message: Any) -> int:
        if message.get("what") in (None, _NONE):
            return 0            # the subscription's ack is not numbered
        cpu, sequence = message["cpu"], message["seq"]
        expected = self.expected.get(cpu)
        self.expected[cpu] = (sequence + 1) & 0xFFFFFFFF
        if expected is None:
            return 0
        gap = (sequence - expected) & 0xFFFFFFFF
        return gap if gap < 1 << 31 else 0


# Overflowing netlink sockets report ENOBUFS, which pyroute2 turns into a
# socket that fails forever; with this option the kernel drops silently and
# _Sequences counts what was dropped.
_SOL_NETLINK = 270
_NETLINK_NO_ENOBUFS = 5


def _subscribe(receive_buffer: int | None = None) -> Any:
    """Open a proc connector socket and ask the kernel for events."""
    from pyroute2 import ProcEventSocket
    from pyroute2.netlink.connector.cn_proc import ProcEventMarshal, proc_event_base

    class _Ack(proc_event_base):
        # pyroute2 decodes PROC_EVENT_NONE without the ack's error field.
        fields = (*proc_event_base.fields, ("err", "I"))

    class _AckMarshal(ProcEventMarshal):
        msg_map: ClassVar = {**ProcEventMarshal.msg_map, _NONE: _Ack}

    sock = ProcEventSocket()
    try:
        sock.setsockopt(_SOL_NETLINK, _NETLINK_NO_ENOBUFS, 1)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.bind()
        sock.set_marshal(_AckMarshal())
        replies = sock.control(listen=True)
        sock.set_marshal(ProcEventMarshal())
        for reply in replies:
            error = reply.get("err") if reply.get("what") == _NONE else 0
            if error:
                raise OSError(error, f"proc connector: {os.strerror(error)}")
    except BaseException:
        sock.close()
        raise
    return sock


_NONE = 0x00000000
_EXEC = 0x00000002
_EXIT = 0x80000000


def _decode(message: Any) -> ProcEvent | None:
    """Turn one pyroute2 proc event into a ProcEvent, or None to skip it."""
    what = message.get("what")
    if what == _EXEC:
        pid = message["process_tgid"]
        try:
            comm: str | None = process_comm(pid)
        except ProcessGone:
            comm = None
        return ProcEvent(ProcEventKind.EXEC, pid, message["timestamp_ns"], comm=comm)
    if what == _EXIT:
        # Every thread's exit is reported; the process ends with its leader.
        if message["process_pid"] != message["process_tgid"]:
            return None
        code, killer, core = describe_exit(message["exit_code"])
        return ProcEvent(
            ProcEventKind.EXIT,
            message["process_tgid"],
            message["timestamp_ns"],
            exit_code=code,
            signal=killer,
            core_dumped=core,
            parent_pid=message["parent_tgid"],
        )
    return None
