"""Just enough ELF: section and segment headers, notes, address to file offset.

A small reader over `struct` (ELF32 and ELF64, either byte order) for what
USDT needs, reading only the headers and the sections asked for, so that
scanning every file mapped on a host stays cheap. Executables and shared
objects only: a relocatable object has no addresses yet.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

SHT_NOTE = 7
SHT_NOBITS = 8
PT_LOAD = 1
PF_X = 1
PF_W = 2
ET_EXEC, ET_DYN = 2, 3
_SHN_XINDEX = 0xFFFF
# Files come from processes anyone runs: every count and size in them is
# checked against the file's real size and these bounds before use.
MAX_SECTIONS = 1 << 16
MAX_READ = 64 << 20         # no section we read is anywhere near this


class ElfFormatError(Exception):
    """Why a file is not a usable ELF file (the caller adds its name)."""


@dataclass(frozen=True)
class Section:
    """A section header: name, type, link-time address, file offset, size."""

    name: bytes
    type: int
    address: int
    offset: int
    size: int


@dataclass(frozen=True)
class Segment:
    """A PT_LOAD program header: how a part of the file is mapped."""

    address: int
    offset: int
    memory_size: int
    executable: bool
    file_size: int = 0
    writable: bool = False


@dataclass(frozen=True)
class Note:
    """One ELF note: owner (without its NUL), type and descriptor bytes."""

    owner: bytes
    type: int
    desc: bytes


class ElfFile:
    """The headers of an open ELF executable or shared object.

    >>> with open("/bin/true", "rb") as file:
    ...     elf = ElfFile(file)
    ...     elf.wide, elf.section(b".text") is not None
    (True, True)
    """

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.file_size = file.seek(0, os.SEEK_END)
        try:
            self._parse()
        except (struct.error, ValueError, OverflowError, MemoryError) as error:
            raise ElfFormatError(f"malformed ELF file ({error})") from None

    def _parse(self) -> None:
        ident = self.read(0, 16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF":
            raise ElfFormatError("not an ELF file")
        elf_class, encoding = ident[4], ident[5]
        if elf_class not in (1, 2) or encoding not in (1, 2):
            raise ElfFormatError("unknown ELF class or byte order")
        self.wide = elf_class == 2
        self.order = "<" if encoding == 1 else ">"
        self.word = "Q" if self.wide else "I"
        (self.type, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize,
         shnum, shstrndx) = self.unpack("HHI" + self.word * 3 + "IHHHHHH", 16)
        if self.type not in (ET_EXEC, ET_DYN):
            raise ElfFormatError(
                f"ELF type {self.type} is neither an executable nor a shared object")
        self.sections = self._sections(shoff, shentsize, shnum, shstrndx)
        self.segments = self._segments(phoff, phentsize, phnum)

    def read(self, offset: int, size: int) -> bytes:
        """Read `size` bytes of the file at `offset` (fewer at its end)."""
        if offset < 0 or size < 0 or offset >= self.file_size:
            return b""
        size = min(size, self.file_size - offset)
        if size > MAX_READ:
            raise ElfFormatError(f"a part of {size} bytes: too large")
        self.file.seek(offset)
        return self.file.read(size)

    def unpack(self, layout: str, offset: int) -> tuple[int, ...]:
        """Unpack a struct `layout` (without byte order) at `offset`."""
        layout = self.order + layout
        data = self.read(offset, struct.calcsize(layout))
        try:
            return struct.unpack(layout, data)
        except struct.error:
            raise ElfFormatError("truncated ELF file") from None

    def section(self, name: bytes) -> Section | None:
        """The first section called `name`, if any."""
        return next((s for s in self.sections if s.name == name), None)

    def file_offset(self, address: int) -> int | None:
        """The file offset of a link-time address, through its PT_LOAD
        segment (libbpf's rule) or else the section holding it."""
        for segment in self.segments:
            if segment.address <= address < segment.address + segment.memory_size:
                return address - segment.address + segment.offset
        for section in self.sections:
            if (section.address and section.type != SHT_NOBITS
                    and section.address <= address < section.address + section.size):
                return address - section.address + section.offset
        return None

    def notes(self, section: Section) -> Iterator[Note]:
        """The notes of a SHT_NOTE section."""
        data = self.read(section.offset, section.size)
        at = 0
        while at + 12 <= len(data):
            namesz, descsz, kind = struct.unpack_from(self.order + "III", data, at)
            owner_at = at + 12
            desc_at = owner_at + _align4(namesz)
            at = desc_at + _align4(descsz)
            if desc_at + descsz > len(data):
                raise ElfFormatError("truncated note")
            yield Note(data[owner_at:owner_at + namesz].rstrip(b"\0"), kind,
                       data[desc_at:desc_at + descsz])

    def _sections(self, shoff: int, entsize: int, count: int,
                  strndx: int) -> list[Section]:
        if shoff == 0:
            return []
        layout = "II" + self.word * 4   # name, type, flags, addr, offset, size
        if count == 0 or strndx == _SHN_XINDEX:    # extended numbering
            first = self.unpack(layout + "II", shoff)
            count = count or first[5]
            strndx = first[7] if strndx == _SHN_XINDEX else strndx
        if entsize < struct.calcsize(self.order + layout):
            raise ElfFormatError(f"section header size {entsize} too small")
        if count > MAX_SECTIONS or shoff + count * entsize > self.file_size:
            raise ElfFormatError(f"{count} section headers do not fit the file")
        raw = [self.unpack(layout, shoff + i * entsize) for i in range(count)]
        if not 0 <= strndx < count:
            raise ElfFormatError("bad section name table")
        names = self.read(raw[strndx][4], raw[strndx][5])
        sections = []
        for name_at, kind, _, address, offset, size in raw:
            end = names.find(b"\0", name_at)
            sections.append(Section(names[name_at:end if end >= 0 else None],
                                    kind, address, offset, size))
        return sections

    def _segments(self, phoff: int, entsize: int, count: int) -> list[Segment]:
        segments = []
        if count and (entsize < (56 if self.wide else 32)
                      or phoff + count * entsize > self.file_size):
            raise ElfFormatError("program headers do not fit the file")
        for i in range(count):
            at = phoff + i * entsize
            if self.wide:
                kind, flags, offset, address, _, filesz, memsz, _ = self.unpack(
                    "IIQQQQQQ", at)
            else:
                kind, offset, address, _, filesz, memsz, flags, _ = self.unpack(
                    "IIIIIIII", at)
            if kind == PT_LOAD:
                segments.append(Segment(address, offset, memsz, bool(flags & PF_X),
                                        filesz, bool(flags & PF_W)))
        return segments


def _align4(size: int) -> int:
    return (size + 3) & ~3
