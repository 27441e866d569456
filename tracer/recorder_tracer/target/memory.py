"""Read a traced process's memory: strings, its recorder registry, topics.

Entries carry addresses (format, source location, %s arguments) that only
mean something in the process that wrote them. While it runs we read
/proc/PID/mem; once it has exited, an address inside a file mapping is
still readable from the file, through the memory map we cached while it
lived. What neither can read is reported as unreadable, never guessed.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from dataclasses import dataclass, field

from recorder_tracer.abi import MAX_TOPICS, REGISTRY_MAGIC
from recorder_tracer.target.elf import ElfFile, ElfFormatError, Segment
from recorder_tracer.target.safe_open import open_mapped, open_regular

_REGISTRY = struct.Struct("<QII QII Q")     # magic, version, entry_size,
                                            # topics, topic_count, shard_count,
                                            # tweaks
_TOPIC = struct.Struct("<qII QQQQ")         # trace, id, size, name,
                                            # description, armed, next
STRING_MAX = 256
STRING_CACHE_MAX = 1 << 16      # formats and locations of one process
REGISTRY_SCAN_BUDGET = 16 << 20     # bytes read looking for a registry


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    permissions: str
    offset: int
    path: str
    device: int = 0
    inode: int = 0


@dataclass(frozen=True)
class Topic:
    """A topic found in a process's registry."""

    id: int
    name: str
    size: int
    trace: int
    description: str
    address: int


def read_maps(pid: int) -> list[Mapping]:
    """Parse /proc/PID/maps; raises FileNotFoundError if the process is gone."""
    # Names are bytes: a file named in Latin-1 must not stop the tracer.
    with open(f"/proc/{pid}/maps", "rb") as maps:
        return parse_maps(maps.read().decode("utf-8", "surrogateescape"))


def parse_maps(text: str) -> list[Mapping]:
    """Parse the text of a /proc/PID/maps (also kept in share files).

    >>> parse_maps("55d0-55e0 r-xp 00001000 fe:01 42  /bin/app\\n")[0].path
    '/bin/app'
    """
    mappings = []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 5:
            continue
        try:    # a share file's maps block is the process's to write
            start, end = (int(value, 16) for value in parts[0].split("-"))
            major, minor = (int(part, 16) for part in parts[3].split(":"))
            mapping = Mapping(start, end, parts[1], int(parts[2], 16),
                              parts[5].strip() if len(parts) > 5 else "",
                              os.makedev(major, minor), int(parts[4]))
        except (ValueError, OverflowError):
            continue
        mappings.append(mapping)
    return mappings


def load_bias(mappings: list[Mapping], path: str) -> int | None:
    """Return what the loader added to `path`'s link-time addresses, or None.

    A probe or semaphore at link-time address A is at bias + A in the
    process whose `mappings` are given: 0 for a non-PIE executable, the load
    base for a PIE or shared object. The file is matched by (device, inode),
    so any path naming it will do; None when the process does not map it.

    >>> maps = read_maps(os.getpid())
    >>> exe = os.path.realpath("/proc/self/exe")
    >>> bias = load_bias(maps, exe)
    >>> any(m.start <= bias + load_segments(exe)[0].address < m.end for m in maps)
    True
    """
    try:    # one open: the segments read are those of the inode matched
        with os.fdopen(open_regular(path), "rb") as file:
            stat = os.fstat(file.fileno())
            segments = ElfFile(file).segments
    except (OSError, ElfFormatError):
        return None
    page = os.sysconf("SC_PAGE_SIZE")
    for mapping in mappings:   # in address order: the file's first mapping
        if (mapping.device, mapping.inode) != (stat.st_dev, stat.st_ino):
            continue
        for segment in segments:
            if segment.offset & -page == mapping.offset:
                return mapping.start - (segment.address & -page)
    return None


@dataclass
class ProcessImage:
    """Cached view of one process's address space, usable after it exits.

    Live reads go through a descriptor of /proc/PID/mem opened once, which
    stays bound to that address space: after the process execs, exits or
    its PID is reused, reads through it fail (and fall back to the files
    mapped then) instead of returning another program's bytes.

    The follower's thread closes an image (the process exec'd) while the
    loop's thread may be decoding with it: a read and close() exclude each
    other, so a pread never goes to a descriptor number closed meanwhile,
    and maybe already reused for another process's memory.
    """

    pid: int
    mappings: list[Mapping] = field(default_factory=list)
    _strings: dict[int, str | None] = field(default_factory=dict)
    _memory: int | None = None
    _bound: bool = False        # _memory was opened (or failed) once
    _registry: int | None = None    # found once: it never moves in one image
    _offline: bool = False      # /proc/PID/map_files may be another's now
    # When `of` bound it to the address space (CLOCK_MONOTONIC ns): an
    # image bound before a program began is an earlier program's.
    bound_ns: int | None = field(default=None, compare=False)
    # Up by one when a string cached may read otherwise now (the cache
    # cleared, a None replaced): what was made from its text is stale.
    strings_generation: int = field(default=0, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False,
                                  compare=False)    # _memory: read vs close

    @classmethod
    def of(cls, pid: int) -> ProcessImage:
        image = cls(pid, bound_ns=time.monotonic_ns())
        image._bind()               # the memory first, then its maps
        image.mappings = read_maps(pid)
        return image

    @classmethod
    def offline(cls, pid: int, mappings: list[Mapping]) -> ProcessImage:
        """An image of a process that is gone, read only from the files of
        `mappings` (its maps, kept earlier): never from /proc/PID/mem, which
        may be another process's by now."""
        image = cls(pid, mappings)
        image._bound = True
        image._offline = True
        return image

    def refresh_maps(self, mappings: list[Mapping]) -> bool:
        """Take `mappings`, the process's maps read again (libraries loaded
        since), unless this image's first file mapping is not among them:
        the process exec'd another program (its EXEC not handled yet), and
        this program's records still in a stream decode with its own maps.
        """
        first = next((m for m in self.mappings if m.inode), None)
        if first is not None and not any(
                (m.start, m.device, m.inode) == (first.start, first.device, first.inode)
                for m in mappings):
            return False
        self.mappings = mappings
        return True

    def _bind(self) -> None:
        self._bound = True
        try:
            self._memory = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._memory = None

    def close(self) -> None:
        """Stop reading the live process (files still answer); waits for a
        read in progress in another thread."""
        with self._lock:
            self._bound = True
            if self._memory is not None:
                os.close(self._memory)
                self._memory = None

    def __del__(self) -> None:
        self.close()

    def read(self, address: int, size: int) -> bytes | None:
        """Bytes at `address`, from the live process or its mapped file."""
        with self._lock:
            if not self._bound:
                self._bind()
            try:    # not contextlib.suppress: ~0.4 us more per read
                data = (os.pread(self._memory, size, address)
                        if self._memory is not None else None)
            except (OSError, ValueError, OverflowError):
                data = None
        return data or self._read_from_file(address, size)

    def _read_from_file(self, address: int, size: int) -> bytes | None:
        for mapping in self.mappings:
            if mapping.start <= address < mapping.end and mapping.path.startswith("/"):
                size = min(size, mapping.end - address)
                live = not self._offline and mapping.inode != 0
                try:    # the path is the process's to choose: see safe_open
                    descriptor = open_mapped(
                        self.pid, mapping.path, mapping.device, mapping.inode,
                        mapping.start if live else None,
                        mapping.end if live else None)
                except OSError:
                    return None
                try:
                    return os.pread(descriptor, size, mapping.offset + address
                                    - mapping.start) or None
                except OSError:
                    return None
                finally:
                    os.close(descriptor)
        return None

    def add_file(self, path: str, base: int) -> None:
        """Map `path` at load `base` as the loader would (PT_LOAD segments):
        lets us read a process that exited before we saw its maps."""
        if any(mapping.path == path for mapping in self.mappings):
            return
        for segment in load_segments(path):
            start = base + segment.address
            writable = "w" if segment.writable else "-"
            executable = "x" if segment.executable else "-"
            self.mappings.append(Mapping(start, start + segment.file_size,
                                         f"r{writable}{executable}p", segment.offset,
                                         path))

    def string(self, address: int, limit: int = STRING_MAX,
               cached: bool = True) -> str | None:
        """The NUL-terminated string at `address`, None if unreadable.

        Formats and source locations are constants: they are cached (bounded).
        A %s argument is not (`cached=False`, decode/entry.py): its address is
        reused for other text, and a long trace would grow the cache without
        end."""
        if cached and address in self._strings:
            return self._strings[address]
        data = self.read(address, limit) if address else None
        text = None
        if data is not None:
            text = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        if cached:
            if len(self._strings) >= STRING_CACHE_MAX:
                self._strings.clear()
                self.strings_generation += 1
            self._strings[address] = text
        return text

    def remember(self, address: int, text: str | None) -> None:
        """Cache the string at `address` as read elsewhere while the process
        lived (BPF, at its end), unless it was read already."""
        if address and text is not None and self._strings.get(address) is None:
            self.strings_generation += address in self._strings
            self._strings[address] = text

    def find_registry(self) -> int | None:
        """Address of `recorder_registry`, found by its magic in data mappings
        (a scan of up to 4 MiB per mapping, so the answer is kept; a core
        not loaded yet is looked for again next time)."""
        if self._registry is not None:
            return self._registry
        needle = struct.pack("<Q", REGISTRY_MAGIC)
        budget = REGISTRY_SCAN_BUDGET   # a process may map many big files
        for mapping in self.mappings:
            if "rw" not in mapping.permissions or not mapping.path.startswith("/"):
                continue
            size = min(mapping.end - mapping.start, 1 << 22, budget)
            if size <= 0:
                break
            budget -= size
            data = self.read(mapping.start, size)
            if not data:
                continue
            index = data.find(needle)
            while index >= 0:
                if index % 8 == 0:
                    _, version, entry_size, *_ = _REGISTRY.unpack_from(data, index)
                    if version == 1 and entry_size == 144:
                        self._registry = mapping.start + index
                        return self._registry
                index = data.find(needle, index + 1)
        return None

    def topic_count(self) -> int | None:
        """How many topics the registry says are registered (None without
        one). The core publishes a topic in the list before it counts it:
        read before topics(), every topic missing from that list has an id
        at or above this count."""
        registry = self.find_registry()
        header = self.read(registry, _REGISTRY.size) if registry is not None else None
        if not header or len(header) < _REGISTRY.size:
            return None
        return int(_REGISTRY.unpack(header)[4])

    def topics(self) -> list[Topic]:
        """Every topic in the process's registry (empty without a core)."""
        registry = self.find_registry()
        if registry is None:
            return []
        header = self.read(registry, _REGISTRY.size)
        if not header or len(header) < _REGISTRY.size:
            return []
        address = _REGISTRY.unpack(header)[3]
        found: list[Topic] = []
        while address and len(found) < MAX_TOPICS:
            raw = self.read(address, _TOPIC.size)
            if not raw or len(raw) < _TOPIC.size:
                break
            trace, topic_id, size, name, description, _armed, following = (
                _TOPIC.unpack(raw)
            )
            found.append(
                Topic(
                    topic_id,
                    self.string(name) or f"topic{topic_id}",
                    size,
                    trace,
                    self.string(description) or "",
                    address,
                )
            )
            address = following
        return sorted(found, key=lambda topic: topic.id)


def load_segments(path: str) -> list[Segment]:
    """The PT_LOAD segments of the ELF file at `path` ([] if unreadable)."""
    try:
        with os.fdopen(open_regular(path), "rb") as file:
            return ElfFile(file).segments
    except (OSError, ElfFormatError):
        return []

