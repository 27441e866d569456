"""Trace the USDT probes other programs ship and print their arguments.

    tracer = UsdtTracer(UsdtOptions(pids=[1234], selectors=[
        UsdtSelector.parse("/usr/bin/python3.11:python:function__entry")]), sink)
    tracer.run()             # until the duration, Ctrl-C, or the targets exit
    tracer.summaries()       # per-CPU produced / received / lost

One BPF program (kernel/bpf/usdt.c) serves every probe: it is attached per
PID to each selected site with the probe's semaphore as reference counter
(kernel/arm.py), and decodes the arguments from the site's specs, which we
lower from the note's argument string (decode/usdt_args.py) and store under
(pid, runtime address), the address PT_REGS_IP shows at the hit: load bias
+ the note's address.

Strings: BPF copies, bounded, the string each pointer-sized argument points
to (USDT_STRING_MAX bytes), at the hit, so a short-lived process or a
freed buffer still shows its text; we show it where it looks like text and
the pointer otherwise. A format hint (`PATH:PROVIDER:PROBE:s,d,x`) forces
the choice per argument and spares the copy for numbers.

`-c`: the command is started under ptrace and stopped at its exec, when the
executable (and ld.so) are mapped; we arm it there and let it go, so no
probe of the executable fires before its specs are known. A library mapped
later is armed by path beforehand (the kernel plants the probe when it is
mapped); its first hit finds no specs, so that hit arrives without
arguments (counted as `unknown site`), and we load its specs then.

(Past 400 lines: the selector, the program's loader and the tracer's life
cycle are used together and nowhere else; argument specs are usdt_args.py.)
"""

from __future__ import annotations

import contextlib
import ctypes
import fnmatch
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from recorder_tracer.decode.record import Arg, Record
from recorder_tracer.decode.reorder import ReorderBuffer
from recorder_tracer.decode.usdt_args import (
    MAX_ARGS,
    ArgFormat,
    UsdtArgument,
    decode_value,
    effective_format,
    fetches_string,
    format_value,
    lower,
    parse_arguments,
    parse_formats,
    symbol_resolver,
)
from recorder_tracer.errors import TracerError
from recorder_tracer.kernel import arm
from recorder_tracer.kernel.harvest import BPF_DIR, require_bpf
from recorder_tracer.kernel.stream import CpuSummary, Stream
from recorder_tracer.session.loop import describe_status, process_alive, stop_on_signals
from recorder_tracer.target import notes
from recorder_tracer.target.memory import load_bias, read_maps
from recorder_tracer.target.procs import process_comm

Sink = Callable[[Record], None]
Reporter = Callable[[str], None]

USDT_SITE_UNKNOWN = 0x1     # kernel/bpf/usdt.h
COUNTER_NAMES = ("hits", "streamed", "stream_failed", "unknown_site")
_FORMATS = re.compile(r"[a-z]?(,[a-z]?)+|[a-z]")   # checked by parse_formats


@dataclass(frozen=True)
class UsdtSelector:
    """Which probes to trace: `[PATH:]PROVIDER:PROBE[:FORMATS]`.

    PROVIDER and PROBE may be shell patterns (`python:function__*`). PATH is
    a file, or a command name looked up in $PATH; without it, every file the
    process maps (for -c: those mapped at exec). FORMATS gives one letter per
    argument: s string, d signed, u unsigned, x hex, a (or nothing) auto.

    >>> UsdtSelector.parse("/usr/bin/python3.11:python:function__entry:s,s,d")
    ... # doctest: +NORMALIZE_WHITESPACE
    UsdtSelector(path='/usr/bin/python3.11', provider='python',
                 probe='function__entry', formats=(<ArgFormat.STRING: 's'>,
                 <ArgFormat.STRING: 's'>, <ArgFormat.SIGNED: 'd'>))
    >>> UsdtSelector.parse("python:function__entry").path is None
    True
    """

    path: str | None
    provider: str
    probe: str
    formats: tuple[ArgFormat, ...] = ()

    @classmethod
    def parse(cls, text: str) -> UsdtSelector:
        """Parse one --usdt value; raises TracerError when malformed."""
        parts = text.split(":")
        formats: tuple[ArgFormat, ...] = ()
        if len(parts) >= 3 and _FORMATS.fullmatch(parts[-1]) and \
                (len(parts) >= 4 or "/" not in parts[0]):
            try:
                formats = parse_formats(parts.pop())
            except ValueError as error:
                raise TracerError(f"--usdt {text}: {error}") from None
        if len(parts) < 2 or not all(parts[-2:]):
            raise TracerError(f"--usdt {text}: expected "
                              "[PATH:]PROVIDER:PROBE[:FORMATS]")
        path = ":".join(parts[:-2]) or None
        if path is not None:
            path = _resolve_path(path)
        return cls(path, parts[-2], parts[-1], formats)

    def matches(self, probe: notes.UsdtProbe) -> bool:
        """True if `probe` is one this selector names."""
        return (fnmatch.fnmatchcase(probe.provider, self.provider)
                and fnmatch.fnmatchcase(probe.name, self.probe))

    def __str__(self) -> str:
        return f"{self.path + ':' if self.path else ''}{self.provider}:{self.probe}"


def _resolve_path(path: str) -> str:
    if "/" not in path:
        found = shutil.which(path)
        if found is None:
            raise TracerError(f"--usdt: {path}: no such file or command")
        path = found
    if not os.path.exists(path):
        raise TracerError(f"--usdt: {path}: no such file")
    return os.path.realpath(path)


@dataclass
class UsdtOptions:
    """What to trace; see `recorder trace --help`."""

    selectors: list[UsdtSelector]
    pids: list[int] = field(default_factory=list)
    command: list[str] | None = None
    duration: float | None = None
    pages_per_cpu: int = 256
    string_max: int = 128


@dataclass(frozen=True)
class UsdtCounters:
    """What usdt.c counted on one CPU: hits = streamed + stream_failed."""

    cpu: int
    hits: int
    streamed: int
    stream_failed: int
    unknown_site: int


class UsdtProgram:
    """The loaded kernel/bpf/usdt.c: its fd, event type and maps.

    It offers what `stream.Stream` reads of a Harvester (`bpf` with a
    per-CPU `stream`, `record_type`, `counters()`), so the loss accounting
    is the same code.
    """

    def __init__(self, string_max: int = 128, max_sites: int = 16384) -> None:
        bcc = require_bpf()
        if string_max <= 0 or string_max % 8:
            raise TracerError("string size must be a positive multiple of 8")
        cflags = [f"-I{BPF_DIR}", f"-DUSDT_STRING_MAX={string_max}",
                  f"-DUSDT_MAX_SITES={max_sites}"]
        try:
            self.bpf = bcc.BPF(src_file=str(BPF_DIR / "usdt.c").encode(),
                               cflags=cflags)
        except Exception as error:
            raise TracerError(f"cannot load the BPF USDT program: {error}") from None
        self.program_fd: int = arm.register_bcc_program(
            self.bpf, self.bpf.load_func(b"usdt_hit", bcc.BPF.KPROBE))
        self.record_type: type[ctypes.Structure] = self.bpf[b"scratch"].sLeaf
        self.sites = self.bpf[b"sites"]

    def close(self) -> None:
        """Unload the program and its maps (detach first)."""
        arm.forget_bcc_program(self.program_fd)
        self.bpf.cleanup()

    def counters(self) -> list[UsdtCounters]:
        """Per-CPU counters (hits, streamed, refused, unknown sites)."""
        table = self.bpf[b"counters"]
        per_counter = [list(table[ctypes.c_int(index)])
                       for index in range(len(COUNTER_NAMES))]
        return [UsdtCounters(cpu, *(values[cpu] for values in per_counter))
                for cpu in range(len(per_counter[0]))]


@dataclass(frozen=True)
class ProbeSite:
    """A selected probe site of a file, and how to show its arguments."""

    probe: notes.UsdtProbe
    file: str                   # the file's name as the process maps it
    arguments: tuple[UsdtArgument, ...]
    formats: tuple[ArgFormat, ...]

    @classmethod
    def of(cls, probe: notes.UsdtProbe, file: str,
           selector: UsdtSelector) -> ProbeSite:
        arguments = tuple(parse_arguments(probe.arguments)[:MAX_ARGS])
        hints = selector.formats + (ArgFormat.AUTO,) * MAX_ARGS
        formats = tuple(effective_format(argument, hint)
                        for argument, hint in zip(arguments, hints, strict=False))
        return cls(probe, file, arguments, formats)


@dataclass
class TracedProcess:
    """One traced process: its attachments and its sites' runtime addresses."""

    pid: int
    comm: str
    sites: list[ProbeSite] = field(default_factory=list)
    attachments: list[arm.Attachment] = field(default_factory=list)
    by_address: dict[int, ProbeSite] = field(default_factory=dict)


class UsdtTracer:
    """Arms USDT probes in processes, streams and decodes their hits.

    The life cycle mirrors TraceSession's: `start()` (arm -p PIDs, start
    -c), `run()` or repeated `poll()`, `close()`, `summaries()`. A
    TraceSession with USDT selectors drives one as part of its own loop:
    it passes its `reorder` buffer, arms, reaps and ends processes itself.
    """

    def __init__(self, options: UsdtOptions, sink: Sink,
                 report: Reporter = lambda message: None,
                 reorder: ReorderBuffer | None = None) -> None:
        if not options.selectors:
            raise TracerError("no USDT probe selected")
        self.options = options
        self.sink = sink
        self.report = report
        self.processes: dict[int, TracedProcess] = {}
        self.exited: dict[int, TracedProcess] = {}
        self.unknown_sites = 0
        self.reorder = reorder if reorder is not None else ReorderBuffer(sink)
        self._reported: set[str] = set()
        self._stop = threading.Event()
        self._child: int | None = None
        self._child_status: int | None = None
        self.program = UsdtProgram(string_max=options.string_max)
        self.stream = Stream(self.program, self._on_event,  # type: ignore[arg-type]
                             pages_per_cpu=options.pages_per_cpu)

    # -- arming ---------------------------------------------------------------

    @property
    def site_count(self) -> int:
        """Probe sites armed, over every traced process."""
        return sum(len(p.attachments) for p in self.processes.values())

    def arm(self, pid: int, started: bool = False,
            required: bool = True) -> TracedProcess | None:
        """Attach the selected probes in `pid` and load their specs.

        A selector whose file `pid` does not map is an error, unless we
        `started` the process: then its file is armed by path, for when the
        process maps it. Without `required` (a process found by --comm or
        --all), selectors it lacks are skipped, and None says it has none.
        """
        if pid in self.processes:
            return self.processes[pid]
        try:
            mapped = notes.mapped_files(pid, executable_only=True)
            comm = process_comm(pid)
        except notes.ProcessGone:
            if not required:
                return None
            raise TracerError(f"process {pid} does not exist") from None
        except PermissionError:
            if not required:
                return None
            raise TracerError(f"cannot read process {pid}: permission denied") \
                from None
        process = TracedProcess(pid, comm)
        for selector in self.options.selectors:
            process.sites.extend(self._select(pid, mapped, selector, started,
                                              required))
        if not process.sites:
            return None
        try:
            self._attach(process)
        except TracerError:
            if required or process_alive(pid):
                raise
            return None         # it exited while we armed it
        self.processes[pid] = process
        self._load_specs(process)
        return process

    def _select(self, pid: int, mapped: list[notes.MappedFile],
                selector: UsdtSelector, started: bool,
                required: bool = True) -> list[ProbeSite]:
        files = [(m.open_path, m.path) for m in mapped]
        if selector.path is not None:
            stat = os.stat(selector.path)
            files = [(m.open_path, m.path) for m in mapped
                     if (m.device, m.inode) == (stat.st_dev, stat.st_ino)]
            if not files:
                if not required:
                    return []
                if not started:
                    raise TracerError(f"process {pid} does not map {selector.path}")
                files = [(selector.path, selector.path)]
        found = []
        for open_path, name in files:
            try:
                probes = notes.probes_in_file(open_path)
            except (OSError, notes.NotesError) as error:
                if selector.path is None or not required:
                    continue
                raise TracerError(str(error)) from None
            found.extend(ProbeSite.of(p, name, selector)
                         for p in probes if selector.matches(p))
        if not found and required:
            where = selector.path or f"process {pid}"
            raise TracerError(f"no USDT probe {selector.provider}:{selector.probe}"
                              f" in {where} (see `recorder probes`)")
        for site in found:
            resolve = symbol_resolver(site.probe.path)
            for argument in site.arguments:
                if not argument.supported or (
                        argument.symbol and resolve(argument.symbol) is None):
                    self._report_once(f"{site.probe.full_name}: cannot read "
                                      f"argument {argument.text!r}; shown as "
                                      "<unreadable>")
        return found

    def _report_once(self, message: str) -> None:
        if message not in self._reported:
            self._reported.add(message)
            self.report(message)

    def _attach(self, process: TracedProcess) -> None:
        done = {(a.path, a.file_offset) for a in process.attachments}
        for site in process.sites:
            key = (site.probe.path, site.probe.file_offset)
            if key in done:
                continue
            done.add(key)
            try:
                process.attachments.append(arm.attach_uprobe(
                    self.program.program_fd, site.probe.path,
                    site.probe.file_offset, process.pid,
                    site.probe.semaphore_offset))
            except arm.ArmError as error:
                for attachment in process.attachments:
                    arm.detach(attachment)
                raise TracerError(str(error)) from None

    def _load_specs(self, process: TracedProcess) -> None:
        """Store the specs of every site mapped in the process by now."""
        try:
            mappings = read_maps(process.pid)
        except OSError:
            return
        biases: dict[str, int | None] = {}
        for site in process.sites:
            path = site.probe.path
            if path not in biases:
                biases[path] = load_bias(mappings, path)
            bias = biases[path]
            if bias is None:
                continue
            address = bias + site.probe.address
            if address in process.by_address:
                continue
            key = self.program.sites.Key(pid=process.pid, ip=address)
            leaf = self.program.sites.Leaf()
            leaf.nargs = len(site.arguments)
            resolve = symbol_resolver(path)
            for index, (argument, fmt) in enumerate(
                    zip(site.arguments, site.formats, strict=True)):
                lower(argument, fmt, leaf.args[index], bias, resolve)
            self.program.sites[key] = leaf
            process.by_address[address] = site

    def disarm(self, pid: int) -> None:
        """Detach `pid`'s probes (its semaphores drop back) and drop its specs."""
        process = self.processes.pop(pid, None)
        if process is None:
            return
        for attachment in process.attachments:
            arm.detach(attachment)
        process.attachments.clear()
        for address in process.by_address:
            key = self.program.sites.Key(pid=pid, ip=address)
            with contextlib.suppress(KeyError):
                del self.program.sites[key]
        self.exited[pid] = process

    def start_command(self, command: list[str],
                      on_stopped: Callable[[int], None] | None = None) -> int:
        """Start `command` stopped at its exec, arm it, then let it run.

        `on_stopped(pid)` runs while it is still stopped, after our arming
        (a TraceSession arms its recorder topics there)."""
        path = shutil.which(command[0])
        if path is None:
            raise TracerError(f"command not found: {command[0]}")
        ptrace = _ptrace_function()
        pid = os.fork()
        if pid == 0:    # the child: stop at exec for the tracer to arm us
            try:
                if ptrace(_PTRACE_TRACEME, 0, None, None) == 0:
                    os.execv(path, command)
            finally:
                os._exit(127)
        _, status = os.waitpid(pid, 0)
        if not (os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGTRAP):
            raise TracerError(f"cannot run {command[0]}: {describe_status(status)}")
        self._child = pid
        try:
            self.arm(pid, started=True)
            if on_stopped is not None:
                on_stopped(pid)
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            ptrace(_PTRACE_DETACH, pid, None, None)
            os.waitpid(pid, 0)
            self._child = None
            raise
        ptrace(_PTRACE_DETACH, pid, None, None)
        return pid

    def start(self) -> None:
        """Arm the -p processes and start the -c command."""
        for pid in self.options.pids:
            self.arm(pid)
        if self.options.command:
            self.start_command(self.options.command)

    # -- events ---------------------------------------------------------------

    def _on_event(self, cpu: int, event: Any) -> None:
        self.reorder.push(self.decode(cpu, event))

    def decode(self, cpu: int, event: Any) -> Record:
        """The Record of one usdt_event."""
        pid = event.pid
        process = self.processes.get(pid) or self.exited.get(pid)
        site = process.by_address.get(event.ip) if process else None
        if process is not None and site is None and pid in self.processes:
            self._load_specs(process)       # a library mapped since we armed
            site = process.by_address.get(event.ip)
        comm = event.comm.decode(errors="replace")
        args: list[Arg] = []
        if event.status & USDT_SITE_UNKNOWN or site is None:
            self.unknown_sites += 1
            message = "<arguments lost: site not known yet>"
        else:
            parts = []
            for index in range(min(event.nargs, len(site.arguments))):
                unreadable = bool(event.unreadable & (1 << index))
                text, length = None, 0
                if not unreadable and fetches_string(site.arguments[index],
                                                     site.formats[index]):
                    # Sent only for these (see usdt.c): read nothing else.
                    string = event.strings[index]
                    text, length = bytes(string.text), string.length
                value = decode_value(site.arguments[index], site.formats[index],
                                     event.args[index], unreadable, text, length)
                args.append(value)
                parts.append(f"arg{index}="
                             f"{format_value(value, site.formats[index])}")
            message = " ".join(parts)
        if site is None:
            provider, topic, where = "usdt", f"{event.ip:#x}", "?"
        else:
            provider, topic = site.probe.provider, site.probe.name
            where = os.path.basename(site.file)
        return Record(ts=event.ts, pid=pid, tid=event.tid, comm=comm, topic=topic,
                      where=where, message=message, args=args, cpu=cpu,
                      provider=provider)

    # -- running --------------------------------------------------------------

    def poll(self, timeout_ms: int = 50) -> bool:
        """Deliver what arrived; False once every traced process has ended."""
        self.stream.poll(timeout_ms=timeout_ms)
        self.reorder.flush()
        if self._child is not None:
            pid, status = os.waitpid(self._child, os.WNOHANG)
            if pid:
                self._child, self._child_status = None, status
                self._ended(pid, describe_status(status))
        for pid in [pid for pid in self.processes if not process_alive(pid)]:
            self._ended(pid, "status unknown")
        return bool(self.processes)

    def _ended(self, pid: int, status: str) -> None:
        process = self.processes.get(pid)
        if process is not None:
            self.stream.drain()     # its last hits, while its specs are known
            self.report(f"process {pid} ({process.comm}) exited: {status}")
            self.disarm(pid)

    def stop(self) -> None:
        """Make run() return."""
        self._stop.set()

    def run(self, start: bool = True) -> None:
        """Stream until the duration ends, stop(), Ctrl-C, or every traced
        process has ended. With `start` False, start() was called already."""
        if start:
            self.start()
        deadline = (time.monotonic() + self.options.duration
                    if self.options.duration else None)
        # Ctrl-C sets the stop flag: a KeyboardInterrupt raised inside bcc's
        # ctypes callback would be printed and swallowed, and we would go on.
        with stop_on_signals(self._stop):
            try:
                while not self._stop.is_set() and self.poll(50):
                    if deadline and time.monotonic() >= deadline:
                        break
            finally:
                self.close()

    @property
    def child_status(self) -> int | None:
        """The -c command's wait status once it has ended."""
        return self._child_status

    def close(self) -> None:
        """Detach everything, drain the stream, emit what is left."""
        for pid in list(self.processes):
            self.disarm(pid)
        self.stream.drain()
        self.reorder.flush_all()

    def release(self) -> None:
        """Free the stream and the BPF program (after close and summaries)."""
        self.stream.close()
        self.program.close()

    def summaries(self) -> list[CpuSummary]:
        """Per-CPU produced, received and lost; call after close()."""
        return self.stream.summary()


_PTRACE_TRACEME = 0
_PTRACE_DETACH = 17


def _ptrace_function() -> Any:
    """libc's ptrace, loaded before fork so the child need not load it."""
    libc = ctypes.CDLL(None, use_errno=True)
    function = libc.ptrace
    function.restype = ctypes.c_long
    function.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p,
                         ctypes.c_void_p]
    return function
