"""Load and read the coverage program (kernel/bpf/coverage.c): a selection
followed through fork and exec, and the records of processes that end
before they could be armed, copied in their own context.

    coverage = Coverage(Selection(all_processes=True), handler)
    coverage.follow(pid, registry)      # a process named by -p or -c
    coverage.armed(pid)                 # armed and backfilled: no copy at exit
    coverage.poll(timeout_ms)           # handler.on_fork / on_exec / on_copy

The handler is called in the thread that polls.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Protocol

from recorder_tracer.decode.entry import RawEntry
from recorder_tracer.errors import TracerError
from recorder_tracer.kernel import btf
from recorder_tracer.kernel.btf import member_offset
from recorder_tracer.kernel.loader import (
    load_program,
    possible_cpus,
    struct_format,
    unload,
)
from recorder_tracer.selftrace import SESSION

FORK, EXEC, BEGIN, TOPIC, ENTRY, END = range(1, 7)      # coverage.h
WATCH_PENDING, WATCH_ARMED, WATCH_NO_CORE = 0, 1, 2     # coverage.h
COUNTER_NAMES = ("forks", "execs", "copies", "no_registry", "lost",
                 "messages_lost")
MAX_CGROUPS = 8


@dataclass
class Selection:
    """What the kernel follows: processes named here, and the children of
    followed ones (`children`)."""

    all_processes: bool = False
    comms: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)    # cgroup v2 directories
    children: bool = True


@dataclass(frozen=True)
class CopiedEntry:
    """An entry copied at a process's end, with what it pointed to."""

    entry: RawEntry
    strings: list[tuple[int, bytes]]    # (length, text) per %s argument
    format: str
    where: str


@dataclass
class Copy:
    """What an ending process's rings held since it was followed."""

    pid: int
    comm: str
    parent: int
    since: int
    registry: int
    start_code: int
    time_ns: int
    topics: dict[int, str] = field(default_factory=dict)
    # Where each topic's name is, for a name BPF could not read: a fork's
    # copy of a read-only page is mapped only once the fork touches it.
    topic_names_at: dict[int, int] = field(default_factory=dict)
    entries: list[CopiedEntry] = field(default_factory=list)
    sent: int = 0
    lost: int = 0
    overwritten: int = 0
    end_ns: int = 0


class Handler(Protocol):
    def on_fork(self, pid: int, parent: int, time_ns: int, registry: int) -> None: ...
    def on_exec(self, pid: int, time_ns: int, comm: str, filename: str,
                start_code: int) -> None: ...
    def on_copy(self, copy: Copy) -> None: ...


def kernel_offsets() -> list[str]:
    """-D flags: the kernel struct members coverage.c reads, from BTF."""
    return [f"-D{name}={member_offset(struct_name, member)}"
            for name, struct_name, member in (
                ("TASK_PID_OFFSET", "task_struct", "pid"),
                ("TASK_TGID_OFFSET", "task_struct", "tgid"),
                ("TASK_MM_OFFSET", "task_struct", "mm"),
                ("MM_START_CODE_OFFSET", "mm_struct", "start_code"),
                ("MM_START_DATA_OFFSET", "mm_struct", "start_data"),
                ("MM_END_DATA_OFFSET", "mm_struct", "end_data"),
                ("BINPRM_FILENAME_OFFSET", "linux_binprm", "filename"))]


def exit_tracepoint() -> bool:
    """True where sched_process_exit runs before exit_mm() (Linux 6.16,
    which also gave it its `group_dead` argument, a second one): the ending
    process's memory is still there. Elsewhere the copy runs at exit_group()."""
    try:
        return btf.tracepoint_arguments("sched_process_exit") >= 2
    except TracerError:
        return False


def kernel_follows_forks() -> bool:
    """True when a trace session follows forks and execs in the kernel
    (this module) rather than per PID through the proc connector.

    Only where the copy at exit can run in sched_process_exit before
    exit_mm() (Linux 6.16+, exit_tracepoint()). The exit_group() variant
    for older kernels is refused by 6.1's verifier (E2BIG on
    raw_tracepoint__sys_enter, seen in the CI's VM guest), so older kernels
    follow through the proc connector, without copies at exit.
    RECORDER_COVERAGE=1 turns it on there anyway, to try it.
    """
    return os.environ.get("RECORDER_COVERAGE") == "1" or exit_tracepoint()


def cgroup_fd(path: str) -> int:
    """An fd of the cgroup v2 directory of `path` (see cgroups.cgroup_path);
    a one-line error if it is not one."""
    from recorder_tracer.target.cgroups import cgroup_path
    full = cgroup_path(path)
    try:
        fd = os.open(full, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise TracerError(f"--cgroup {path}: {error.strerror}") from None
    if not os.path.exists(os.path.join(full, "cgroup.procs")):
        os.close(fd)
        raise TracerError(f"--cgroup {path}: not a cgroup directory")
    return fd


class Coverage:
    """One loaded coverage program."""

    def __init__(self, selection: Selection, handler: Handler,
                 ring_pages: int = 2048, copies: bool = True) -> None:
        self.selection = selection
        self.handler = handler
        self.bpf: Any = None
        if len(selection.cgroups) > MAX_CGROUPS:
            raise TracerError(f"at most {MAX_CGROUPS} --cgroup")
        cflags = [f"-DCOVERAGE_RING_PAGES={ring_pages}",
                  f"-DCOVERAGE_CPUS={min(possible_cpus(), 64)}",
                  f"-DCOVERAGE_CGROUPS={MAX_CGROUPS}",
                  *kernel_offsets()]
        if exit_tracepoint():
            cflags.append("-DCOVERAGE_EXIT_TRACEPOINT")
        cgroup_fds = [cgroup_fd(path) for path in selection.cgroups]
        try:
            self.bpf = load_program("coverage.c", cflags, "coverage")
            import bcc
            programs = self.bpf[b"walk_programs"]
            for index, name in enumerate((b"walk_more", b"scan_more")):
                function = self.bpf.load_func(name, bcc.BPF.RAW_TRACEPOINT)
                programs[ctypes.c_int(index)] = ctypes.c_int(function.fd)
        except Exception as error:
            for fd in cgroup_fds:
                os.close(fd)
            if self.bpf is not None:
                unload(self.bpf)
            if isinstance(error, TracerError):
                raise
            raise TracerError(
                f"cannot load the BPF coverage program: {error}") from None
        self._formats = {
            kind: "<" + struct_format(self.bpf[name].Leaf)
            for kind, name in ((FORK, b"layout_fork"), (EXEC, b"layout_exec"),
                               (BEGIN, b"layout_begin"), (TOPIC, b"layout_topic"),
                               (ENTRY, b"layout_entry"), (END, b"layout_end"))}
        self._watched = self.bpf[b"watched"]
        comms = self.bpf[b"comms"]
        for name in selection.comms:
            key = comms.Key()
            key.comm = name.encode()[:15]
            comms[key] = ctypes.c_uint8(1)
        for index, fd in enumerate(cgroup_fds):
            self.bpf[b"cgroups"][index] = fd
            os.close(fd)
        config = self.bpf[b"config"]
        value = config.Leaf()
        value.all = int(selection.all_processes)
        value.children = int(selection.children)
        value.cgroups = len(cgroup_fds)
        value.comms = len(selection.comms)
        value.copies = int(copies)
        config[ctypes.c_int(0)] = value
        self._copies: dict[int, Copy] = {}
        self.bpf[b"events"].open_ring_buffer(self._on_message)
        self.bpf[b"copies"].open_ring_buffer(self._on_message)

    # -- what the controller tells the kernel ----------------------------------

    def follow(self, pid: int, registry: int = 0, since: int = 0,
               state: int = WATCH_PENDING) -> None:
        """Follow `pid` (and, with `children`, what it forks from now on)."""
        watch = self._watched.Leaf()
        watch.registry = registry
        watch.since = since
        watch.state = state
        watch.parent = 0
        self._watched[ctypes.c_uint32(pid)] = watch

    def set_state(self, pid: int, state: int, registry: int | None = None) -> None:
        """Mark a followed process armed (WATCH_ARMED: no copy at its end)
        or without a core (WATCH_NO_CORE); a process gone is left alone."""
        key = ctypes.c_uint32(pid)
        try:
            watch = self._watched[key]
        except KeyError:
            return
        watch.state = state
        if registry is not None:
            watch.registry = registry
        self._watched[key] = watch

    def watch_of(self, pid: int) -> tuple[int, int, int, int] | None:
        """(registry, since, state, parent) of a followed process, or None;
        parent is 0 unless it was followed at its fork."""
        try:
            watch = self._watched[ctypes.c_uint32(pid)]
        except KeyError:
            return None
        return watch.registry, watch.since, watch.state, watch.parent

    def forget(self, pid: int) -> None:
        with contextlib.suppress(KeyError):
            del self._watched[ctypes.c_uint32(pid)]

    # -- what the kernel tells the controller ----------------------------------

    def poll(self, timeout_ms: int = 0) -> None:
        """Deliver what the program sent (waiting up to `timeout_ms`)."""
        self.bpf.ring_buffer_poll(timeout_ms)

    def _on_message(self, _context: Any, data: Any, size: int) -> None:
        raw = ctypes.string_at(data, size)
        kind = int.from_bytes(raw[:4], "little")
        fmt = self._formats.get(kind)
        if fmt is None or size < struct.calcsize(fmt):
            return
        values = struct.unpack_from(fmt, raw)
        if kind == ENTRY:
            copy = self._copies.get(values[1])
            if copy is None:
                return
            entry = RawEntry(*values[5:15], tuple(values[15:27]), values[2])
            strings = [(values[27 + 2 * i], values[28 + 2 * i])
                       for i in range(4)]
            copy.entries.append(CopiedEntry(entry, strings, _text(values[35]),
                                            _text(values[36])))
        elif kind == TOPIC:
            copy = self._copies.get(values[1])
            if copy is not None:
                copy.topics[values[2]] = _text(values[5])
                copy.topic_names_at[values[2]] = values[4]
        elif kind == BEGIN:
            (_, tgid, time_ns, since, registry, start_code, parent, _pad,
             comm) = values
            self._copies[tgid] = Copy(tgid, _text(comm), parent, since, registry,
                                      start_code, time_ns)
        elif kind == END:
            _, tgid, _topics, _shards, sent, lost, overwritten, end_ns = values
            copy = self._copies.pop(tgid, None)
            if copy is not None:
                copy.sent, copy.lost, copy.overwritten = sent, lost, overwritten
                copy.end_ns = end_ns
                SESSION.record("copied pid %d at its end: %d entries, %d lost",
                               tgid, sent, lost)
                self.handler.on_copy(copy)
        elif kind == FORK:
            _, tgid, parent, _pad, time_ns, registry = values
            self.handler.on_fork(tgid, parent, time_ns, registry)
        elif kind == EXEC:
            _, tgid, time_ns, start_code, comm, filename = values
            self.handler.on_exec(tgid, time_ns, _text(comm), _text(filename),
                                 start_code)

    def counters(self) -> dict[str, int]:
        """The program's counters, summed over CPUs."""
        table = self.bpf[b"counters"]
        return {name: sum(table[ctypes.c_int(index)])
                for index, name in enumerate(COUNTER_NAMES)}

    def close(self) -> None:
        if self.bpf is not None:
            unload(self.bpf)
            self.bpf = None


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
