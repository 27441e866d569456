"""USDT probes of ELF files and of running processes.

A USDT probe is a SystemTap SDT note (section .note.stapsdt, owner "stapsdt",
type 3) naming a provider, a probe, the link-time address of the probe site,
the address of its semaphore and its argument spec. Attaching a uprobe needs
file offsets, not addresses, so each probe also carries the offset of its site
and of its semaphore (the uprobe's ref_ctr_offset), computed as libbpf does:

- the site's address is corrected for prelink: when the file has a
  .stapsdt.base section, address = note address + (section address - the
  note's base). The semaphore address is taken as written, like libbpf.
- an address becomes a file offset through the PT_LOAD segment holding it.

Files are read with `recorder_tracer.target.elf` (headers, section names and the
note section only) and results are cached per (device, inode, mtime, size),
so scanning every process of a host stays cheap.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO

from recorder_tracer.target.elf import SHT_NOTE, ElfFile, ElfFormatError
from recorder_tracer.target.procs import ProcessGone
from recorder_tracer.target.safe_open import open_identified, strip_deleted

RECORDER_PROVIDER = "recorder"
NT_STAPSDT = 3
STAPSDT_OWNER = b"stapsdt"

_NOTE_SECTION = b".note.stapsdt"
_BASE_SECTION = b".stapsdt.base"
_CACHE_LIMIT = 4096


class NotesError(Exception):
    """Probes could not be read from a file."""


class NotElfError(NotesError):
    """The file is not an ELF executable or shared object, or is malformed."""


@dataclass(frozen=True)
class UsdtProbe:
    """One USDT probe site in one ELF file.

    `address` and `semaphore` are link-time virtual addresses; `file_offset`
    and `semaphore_offset` are what a uprobe attaches to (0: no semaphore).
    """

    path: str
    provider: str
    name: str
    address: int
    file_offset: int
    semaphore: int
    semaphore_offset: int
    arguments: str
    device: int = 0     # the file the sites were read from: a probe is
    inode: int = 0      # attached to this inode only (kernel/arm.py)

    @property
    def identity(self) -> tuple[int, int] | None:
        """(device, inode) of the file read, None if unknown."""
        return (self.device, self.inode) if self.inode else None

    @property
    def full_name(self) -> str:
        """Return "provider:name", the name tplist and bpftrace use."""
        return f"{self.provider}:{self.name}"

    @property
    def is_recorder(self) -> bool:
        """True for a recorder topic's probe."""
        return self.provider == RECORDER_PROVIDER


@dataclass(frozen=True)
class ProbeGroup:
    """One named probe of one file with all its sites (tplist's "locations")."""

    path: str
    provider: str
    name: str
    semaphore: int
    semaphore_offset: int
    sites: tuple[UsdtProbe, ...]

    @property
    def full_name(self) -> str:
        """Return "provider:name"."""
        return f"{self.provider}:{self.name}"


@dataclass(frozen=True)
class MappedFile:
    """A file mapped by a process: where to open it and what it is."""

    path: str  # as /proc/PID/maps names it, without " (deleted)"
    open_path: str  # a path that opens this very file from here
    device: int
    inode: int
    deleted: bool


def probe_order(probe: UsdtProbe) -> tuple[bool, str, str, str, int]:
    """Sort key: recorder probes first, then by provider, name, file, site."""
    return (
        not probe.is_recorder,
        probe.provider,
        probe.name,
        probe.path,
        probe.address,
    )


def sort_probes(probes: Iterable[UsdtProbe]) -> list[UsdtProbe]:
    """Return probes in listing order: recorder first, then other providers."""
    return sorted(probes, key=probe_order)


def group_probes(probes: Iterable[UsdtProbe]) -> list[ProbeGroup]:
    """Gather the sites of each (file, provider, name), in listing order."""
    groups: dict[tuple[str, str, str], list[UsdtProbe]] = {}
    for probe in sort_probes(probes):
        groups.setdefault((probe.path, probe.provider, probe.name), []).append(probe)
    result = [
        ProbeGroup(
            path,
            provider,
            name,
            sites[0].semaphore,
            sites[0].semaphore_offset,
            tuple(sites),
        )
        for (path, provider, name), sites in groups.items()
    ]
    result.sort(key=lambda g: probe_order(g.sites[0]))
    return result


def probes_in_file(path: str | os.PathLike[str]) -> list[UsdtProbe]:
    """List the USDT probe sites of an ELF file, recorder probes first.

    Raises NotElfError for a file that is not an ELF executable or shared
    object, and OSError when it cannot be read.

    >>> [p.full_name for p in probes_in_file("/usr/bin/python3.11")][:1]
    ['python:audit']
    """
    name = os.fspath(path)
    with open(name, "rb") as file:
        stat = os.fstat(file.fileno())
        probes = _cached_probes(_key(stat), file, name)
    return sort_probes(replace(p, path=name, device=stat.st_dev, inode=stat.st_ino)
                       for p in probes)


def probes_in_mapped(mapped: MappedFile) -> list[UsdtProbe]:
    """The probes of a file a process maps, read only if it still is the
    mapped inode (its path is the process's to replace); each probe's
    `path` is `mapped.open_path`. Raises OSError or NotesError."""
    with _open_mapped(mapped) as file:
        stat = os.fstat(file.fileno())
        found = _cached_probes(_key(stat), file, mapped.open_path)
    return sort_probes(replace(p, path=mapped.open_path, device=stat.st_dev,
                               inode=stat.st_ino) for p in found)


def mapped_files(pid: int, executable_only: bool = False) -> list[MappedFile]:
    """List the distinct files process `pid` maps, in the order of its maps.

    `open_path` is the mapped path itself when it names the same inode from
    this mount namespace, else /proc/PID/root/PATH, else the mapping's entry
    in /proc/PID/map_files (deleted files, other namespaces).
    """
    try:
        with open(
            f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape"
        ) as file:
            lines = file.read().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid) from None
    seen: set[tuple[int, int]] = set()
    result = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].startswith("/"):
            continue
        span, perms, _, dev, inode_text, path = fields
        inode = int(inode_text)
        if inode == 0 or (executable_only and "x" not in perms):
            continue
        major, minor = (int(part, 16) for part in dev.split(":"))
        device = os.makedev(major, minor)
        if (device, inode) in seen:
            continue
        seen.add((device, inode))
        path, deleted = strip_deleted(path)
        open_path = _openable(pid, path, span, device, inode, deleted)
        result.append(MappedFile(path, open_path, device, inode, deleted))
    return result


def probes_in_process(pid: int) -> list[UsdtProbe]:
    """List the USDT probe sites of every ELF file process `pid` maps.

    Each probe's `path` is a path that opens the mapped file from here (see
    `mapped_files`). Files that are not ELF or cannot be read are skipped.
    Raises ProcessGone when the process does not exist.
    """
    probes: list[UsdtProbe] = []
    for mapped in mapped_files(pid, executable_only=True):
        try:
            probes.extend(probes_in_mapped(mapped))
        except (OSError, NotesError):
            continue
    return sort_probes(probes)


def mapped_recorder_processes() -> list[int]:
    """List the PIDs of the host that map a file with recorder probes.

    Each distinct file is read once per (device, inode, mtime, size) across
    calls, so a scan costs one read of each /proc/PID/maps and one stat
    per distinct mapped executable file. The snapshot watcher's rescans
    skip most maps (postmortem/rescan.py).
    """
    verdicts: dict[tuple[int, int], bool] = {}
    result = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if maps_recorder_probes(pid, verdicts):
                result.append(pid)
        except (ProcessGone, PermissionError):
            continue
    return sorted(result)


def maps_recorder_probes(pid: int, verdicts: dict[tuple[int, int], bool]) -> bool:
    """Whether process `pid` maps an executable file with recorder probes;
    `verdicts` keeps each file's answer by (device, inode) for one scan.
    Raises ProcessGone."""
    for mapped in mapped_files(pid, executable_only=True):
        identity = (mapped.device, mapped.inode)
        verdict = verdicts.get(identity)
        if verdict is None:
            verdict = _has_recorder_probes(mapped)
            verdicts[identity] = verdict
        if verdict:
            return True
    return False


# --------------------------------------------------------------------------
# Cache

_CacheKey = tuple[int, int, int, int]
_cache: dict[_CacheKey, tuple[UsdtProbe, ...] | str] = {}  # str: why not ELF
_cache_lock = threading.Lock()


def _key(stat: os.stat_result) -> _CacheKey:
    return (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _cached_probes(key: _CacheKey, file: BinaryIO, name: str) -> tuple[UsdtProbe, ...]:
    """Probes of an open file (path left empty), parsed once per key."""
    with _cache_lock:
        found = _cache.get(key)
    if found is None:
        try:
            found = tuple(_read_probes(file))
        except ElfFormatError as error:
            found = str(error)
        with _cache_lock:
            if len(_cache) >= _CACHE_LIMIT:
                del _cache[next(iter(_cache))]
            _cache[key] = found
    if isinstance(found, str):
        raise NotElfError(f"{name}: {found}")
    return found


def _open_mapped(mapped: MappedFile) -> BinaryIO:
    """The mapped file, opened only if it still is (device, inode): its path
    is the process's to choose (a symlink to /etc/shadow, a FIFO)."""
    return os.fdopen(open_identified(mapped.open_path, mapped.device,
                                     mapped.inode), "rb")


def _has_recorder_probes(mapped: MappedFile) -> bool:
    path = mapped.open_path
    try:
        with _open_mapped(mapped) as file:
            found = _cached_probes(_key(os.fstat(file.fileno())), file, path)
    except (OSError, NotesError):
        return False
    return any(p.is_recorder for p in found)


def _openable(
    pid: int, path: str, span: str, device: int, inode: int, deleted: bool
) -> str:
    """A path naming the mapped file (device, inode) from this process."""
    candidates = [] if deleted else [path, f"/proc/{pid}/root{path}"]
    for candidate in candidates:
        try:
            stat = os.stat(candidate)
        except OSError:
            continue
        if (stat.st_dev, stat.st_ino) == (device, inode):
            return candidate
    return f"/proc/{pid}/map_files/{span}"


# --------------------------------------------------------------------------
# Notes to probes


def _read_probes(file: BinaryIO) -> Iterator[UsdtProbe]:
    """Each SDT note of an open file as a probe site (with an empty path)."""
    elf = ElfFile(file)
    base_section = elf.section(_BASE_SECTION)
    for section in elf.sections:
        if section.name != _NOTE_SECTION or section.type != SHT_NOTE:
            continue
        for note in elf.notes(section):
            if note.type == NT_STAPSDT and note.owner == STAPSDT_OWNER:
                yield _probe(elf, note.desc,
                             base_section.address if base_section else 0)


def _probe(elf: ElfFile, desc: bytes, base_section: int) -> UsdtProbe:
    width = 8 if elf.wide else 4
    if len(desc) < 3 * width:
        raise ElfFormatError("short SDT note")
    location, base, semaphore = struct.unpack_from(elf.order + elf.word * 3, desc)
    strings = desc[3 * width:].split(b"\0")
    if len(strings) < 3:
        raise ElfFormatError("SDT note without names")
    provider, name, arguments = (s.decode("utf-8", "replace") for s in strings[:3])
    address = location
    if base_section and base:   # prelink moved the sections, not the notes
        address = (location + base_section - base) % (1 << (8 * width))
    offset = elf.file_offset(address)
    if offset is None:
        raise ElfFormatError(
            f"probe {provider}:{name} at {address:#x} is outside every segment")
    semaphore_offset = 0
    if semaphore:
        found = elf.file_offset(semaphore)
        if found is None:
            raise ElfFormatError(f"semaphore of {provider}:{name} at "
                                 f"{semaphore:#x} is outside every segment")
        semaphore_offset = found
    return UsdtProbe("", provider, name, address, offset, semaphore,
                     semaphore_offset, arguments)


__all__ = [
    "RECORDER_PROVIDER",
    "MappedFile",
    "NotElfError",
    "NotesError",
    "ProbeGroup",
    "ProcessGone",
    "UsdtProbe",
    "group_probes",
    "mapped_files",
    "mapped_recorder_processes",
    "maps_recorder_probes",
    "probes_in_file",
    "probes_in_mapped",
    "probes_in_process",
    "sort_probes",
]
