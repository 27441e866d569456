"""Processes: who runs, and a follower of EXEC and EXIT from the proc connector.

`ProcessFollower` listens on the kernel's proc connector (a NETLINK_CONNECTOR
socket subscribed to CN_IDX_PROC, CONFIG_PROC_EVENTS) and hands each EXEC and
EXIT to a callback or a queue, so the controller can arm a program that
starts and forget one that ends. The messages are a few fixed C structs
(linux/connector.h, linux/cn_proc.h), decoded here with `struct`; the
follower's thread waits on the socket and on a pipe `stop()` writes to.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import signal
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum


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


def stat_fields(pid: int, *numbers: int) -> tuple[int, ...] | None:
    """Numeric fields of /proc/PID/stat by number (proc(5): 22 start time,
    23 virtual size), None if gone or unreadable. The one reader of that
    line, whose command (the process's to choose) may hold ") "."""
    try:    # os.open: a third of open()'s cost, most of a rescan's
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        fields = [data.split(b" ", 1)[0], b"", *data.rsplit(b")", 1)[1].split()]
        return tuple(int(fields[number - 1]) for number in numbers)
    except (OSError, IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """When process `pid` started (field 22), None if it is gone: with the
    pid, it names one process even after the pid is reused."""
    fields = stat_fields(pid, 22)
    return fields[0] if fields is not None else None


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

    When the socket's buffer (`receive_buffer` bytes, 1 MiB by default)
    overflows, the kernel drops events: the follower counts them
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
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
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
            target=self._run, args=(timeout,), name="recorder-procs", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError("proc connector did not answer")
        if self._error is not None:
            error, self._error = self._error, None
            self._thread.join()
            raise error

    def stop(self, timeout: float = 30.0) -> None:
        """Stop listening and join the thread; re-raise a callback's error.

        The reader closes its socket as it ends, which takes it a few
        milliseconds of CPU; `timeout` only bounds a reader stuck in a
        callback (a starved one, niced beside emulators, took over 5 s)."""
        self._stopping.set()
        if self._wake_write >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_write, b"x")
        if self._thread is not None:
            self._thread.join(timeout)
        if (self._wake_read >= 0
                and (self._thread is None or not self._thread.is_alive())):
            # Once: a second stop() must not close numbers reused since.
            os.close(self._wake_read)
            os.close(self._wake_write)
            self._wake_read = self._wake_write = -1
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self, timeout: float) -> None:
        try:
            sock = _subscribe(self.receive_buffer, timeout)
        except BaseException as error:
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        sequences = _Sequences()
        try:
            while not self._stopping.is_set():
                ready, _, _ = select.select([sock, self._wake_read], [], [])
                if self._wake_read in ready:
                    break
                try:
                    data = sock.recv(_RECEIVE_SIZE)
                except BlockingIOError:
                    continue
                for message in _messages(data):
                    lost = sequences.lost(message)
                    if lost:
                        self.lost += lost
                        self._sink(ProcEvent(ProcEventKind.OVERRUN, 0,
                                             message.timestamp, lost=lost))
                    event = _decode(message)
                    if event is not None:
                        self._sink(event)
        except BaseException as error:
            self._error = error
        finally:
            sock.close()


@dataclass(frozen=True)
class _Message:
    """One proc connector message: cn_msg's sequence, then struct
    proc_event's what, cpu, timestamp and its event's first six u32s."""

    sequence: int
    what: int
    cpu: int
    timestamp: int
    data: tuple[int, int, int, int, int, int]


class _Sequences:
    """Counts the events the kernel dropped for us, from sequence numbers.

    The proc connector numbers events per CPU (cn_msg.seq, under a per-CPU
    lock, so each CPU's events reach us in order): a jump is a loss.
    """

    def __init__(self) -> None:
        self.expected: dict[int, int] = {}

    def lost(self, message: _Message) -> int:
        if message.what == _NONE:
            return 0            # the subscription's ack is not numbered
        expected = self.expected.get(message.cpu)
        self.expected[message.cpu] = (message.sequence + 1) & 0xFFFFFFFF
        if expected is None:
            return 0
        gap = (message.sequence - expected) & 0xFFFFFFFF
        return gap if gap < 1 << 31 else 0


_NETLINK_CONNECTOR = 11
_CN_IDX_PROC = _CN_VAL_PROC = 1
_PROC_CN_MCAST_LISTEN = 1
_NLMSG_DONE = 3
_RECEIVE_SIZE = 1 << 16
# nlmsghdr: len, type, flags, seq, pid; cn_msg: idx, val, seq, ack, len, flags
_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
# proc_event: what, cpu, timestamp_ns, then the event (at most 6 u32 read:
# exit's pid, tgid, exit_code, exit_signal, parent pid, parent tgid).
_PROC_EVENT = struct.Struct("=IIQ")
_EVENT_WORDS = 6
# The kernel drops events silently when the socket's buffer is full, rather
# than failing the socket with ENOBUFS; _Sequences counts what was dropped.
_SOL_NETLINK = 270
_NETLINK_NO_ENOBUFS = 5


def _messages(data: bytes) -> Iterator[_Message]:
    """The proc events in one datagram (every length bounded by it)."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length = _NLMSGHDR.unpack_from(data, offset)[0]
        if length < _NLMSGHDR.size or offset + length > len(data):
            return
        body = offset + _NLMSGHDR.size
        if length >= _NLMSGHDR.size + _CN_MSG.size + _PROC_EVENT.size:
            index, value, sequence = _CN_MSG.unpack_from(data, body)[:3]
            if (index, value) == (_CN_IDX_PROC, _CN_VAL_PROC):
                event = body + _CN_MSG.size
                what, cpu, timestamp = _PROC_EVENT.unpack_from(data, event)
                words = data[event + _PROC_EVENT.size:offset + length]
                words = (words + bytes(4 * _EVENT_WORDS))[:4 * _EVENT_WORDS]
                yield _Message(sequence, what, cpu, timestamp,
                               struct.unpack(f"={_EVENT_WORDS}I", words))
        offset += (length + 3) & ~3


def _subscribe(receive_buffer: int | None, timeout: float) -> socket.socket:
    """Open a proc connector socket, ask the kernel for events, and wait
    for its answer (an error there is raised)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                         _NETLINK_CONNECTOR)
    try:
        sock.setsockopt(_SOL_NETLINK, _NETLINK_NO_ENOBUFS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                        receive_buffer if receive_buffer is not None else 1 << 20)
        sock.bind((0, 1 << (_CN_IDX_PROC - 1)))
        operation = struct.pack("=I", _PROC_CN_MCAST_LISTEN)
        header = _CN_MSG.pack(_CN_IDX_PROC, _CN_VAL_PROC, 0, 0, len(operation), 0)
        size = _NLMSGHDR.size + len(header) + len(operation)
        sock.send(_NLMSGHDR.pack(size, _NLMSG_DONE, 0, 0, 0) + header + operation)
        sock.settimeout(timeout)
        while True:         # events may come before the answer: dropped
            for message in _messages(sock.recv(_RECEIVE_SIZE)):
                if message.what == _NONE:
                    if message.data[0]:
                        raise OSError(message.data[0], "proc connector: "
                                      f"{os.strerror(message.data[0])}")
                    sock.setblocking(False)
                    return sock
    except TimeoutError:
        sock.close()
        raise TimeoutError("proc connector did not answer") from None
    except BaseException:
        sock.close()
        raise


_NONE = 0x00000000
_EXEC = 0x00000002
_EXIT = 0x80000000


def _decode(message: _Message) -> ProcEvent | None:
    """Turn one proc connector message into a ProcEvent, or None to skip it."""
    if message.what == _EXEC:
        pid = message.data[1]           # exec: process_pid, process_tgid
        try:
            comm: str | None = process_comm(pid)
        except ProcessGone:
            comm = None
        return ProcEvent(ProcEventKind.EXEC, pid, message.timestamp, comm=comm)
    if message.what == _EXIT:
        # exit: process_pid, process_tgid, exit_code, exit_signal, parent
        # pid, parent tgid. Every thread's exit is reported; the process
        # ends with its leader.
        pid, tgid, status, _signal, _parent, parent_tgid = message.data
        if pid != tgid:
            return None
        code, killer, core = describe_exit(status)
        return ProcEvent(ProcEventKind.EXIT, tgid, message.timestamp,
                         exit_code=code, signal=killer, core_dumped=core,
                         parent_pid=parent_tgid)
    return None
