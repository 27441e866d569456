"""The Source of the USDT probes other programs ship: arm, decode.

    source = UsdtSource([UsdtSelector.parse("python:function__entry")], emit)
    source.arm(pid)          # a TraceSession arms, drains and disarms it

The program's Python half (loading, the sites table, counters) is
kernel/usdt.py; argument specs are decode/usdt_args.py. A process started
by `-c` is armed while stopped at its exec (session/tracker.py), when the
executable (and ld.so) are mapped, so no probe of the executable fires
before its specs are known. A library mapped later is armed by path
beforehand (the kernel plants the probe when it is mapped); its first hit
finds no specs, so that hit arrives without arguments (counted as
`unknown site`), and we load its specs then.

A format hint (`PATH:PROVIDER:PROBE:s,d,x`) forces how each argument is
shown, and spares the string copy for numbers.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from recorder_tracer.decode.record import Arg, Record
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
from recorder_tracer.kernel.stream import Stream
from recorder_tracer.kernel.usdt import USDT_SITE_UNKNOWN, UsdtProgram
from recorder_tracer.target import notes
from recorder_tracer.target.memory import load_bias, read_maps
from recorder_tracer.target.procs import process_alive, process_comm

if TYPE_CHECKING:
    from recorder_tracer.kernel.usdt import WideSites

Emit = Callable[[Record], None]
Reporter = Callable[[str], None]

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


class UsdtSource:
    """The Source of other programs' USDT probes: arms them in processes,
    streams and decodes their hits (see session/source.py)."""

    def __init__(self, selectors: list[UsdtSelector], emit: Emit,
                 report: Reporter = lambda message: None,
                 pages_per_cpu: int = 256, string_max: int = 128) -> None:
        if not selectors:
            raise TracerError("no USDT probe selected")
        self.selectors = selectors
        self.emit = emit
        self.report = report
        self.processes: dict[int, TracedProcess] = {}
        self.exited: dict[int, TracedProcess] = {}
        self.unknown_sites = 0
        self._reported: set[str] = set()
        self.program = UsdtProgram(string_max=string_max)
        self.stream = Stream(self.program, self._on_event,  # type: ignore[arg-type]
                             pages_per_cpu=pages_per_cpu)
        self.streams = [self.stream]
        # Sites attached by file for every process (--comm, --all):
        # follow_system_wide() sets it.
        self.wide: WideSites | None = None

    def follow_system_wide(self, comms: list[str], all_processes: bool,
                           pids: list[int]) -> None:
        """Attach the selected probes by file, for every process mapping the
        files, and report the hits of processes named by `comms` or `pids`
        (or all)."""
        from recorder_tracer.kernel.usdt import WideSites
        self.wide = WideSites(self, comms, all_processes,
                              ProbeSite.of, TracedProcess)
        for pid in pids:
            self.wide.allow(pid)

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
        if self.wide is not None and not started:
            return self.wide.learn(pid)
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
        for selector in self.selectors:
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
        files: list[notes.MappedFile | str] = list(mapped)
        if selector.path is not None:
            stat = os.stat(selector.path)
            files = [m for m in mapped
                     if (m.device, m.inode) == (stat.st_dev, stat.st_ino)]
            if not files:
                if not required:
                    return []
                if not started:
                    raise TracerError(f"process {pid} does not map {selector.path}")
                files = [selector.path]
        found = []
        for file in files:
            # A mapped file is read only while it is the mapped inode.
            name = file if isinstance(file, str) else file.path
            try:
                probes = (notes.probes_in_file(file) if isinstance(file, str)
                          else notes.probes_in_mapped(file))
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
                    site.probe.semaphore_offset, site.probe.identity))
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

    # -- events ---------------------------------------------------------------

    def _on_event(self, cpu: int, event: Any) -> None:
        self.emit(self.decode(cpu, event))

    def decode(self, cpu: int, event: Any) -> Record:
        """The Record of one usdt_event."""
        pid = event.pid
        process = self.processes.get(pid) or self.exited.get(pid)
        site = process.by_address.get(event.ip) if process else None
        if site is None and self.wide is not None:
            site = self.wide.by_address.get(event.ip)
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

    # -- the source's end ----------------------------------------------------

    def traced_pids(self) -> set[int]:
        """The processes armed now."""
        return set(self.processes)

    def comm_of(self, pid: int) -> str | None:
        """The comm of a traced process, None if not ours."""
        process = self.processes.get(pid)
        return process.comm if process is not None else None

    def topic_names(self) -> set[str]:
        """The probe names records can carry now."""
        return {site.probe.name for process in self.processes.values()
                for site in process.sites}

    def on_exec(self, pid: int, started: bool, exec_ns: int) -> None:
        """An exec keeps what was armed: the -c command is armed at its exec
        stop, and a process found by --comm keeps its probes by path."""

    def rescan(self) -> None:
        """Libraries mapped later get their specs at their first hit."""

    def end(self, pid: int) -> None:
        """`pid` exited, its hits delivered: detach it, drop its specs."""
        self.disarm(pid)

    def disarm_all(self) -> None:
        """Detach the system-wide sites too (the session's end)."""
        if self.wide is not None:
            self.wide.detach()

    def release(self) -> None:
        """Free the stream and the BPF program (after the last drain)."""
        self.disarm_all()
        self.stream.close()
        self.program.close()
