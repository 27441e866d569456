"""Crafted ELF files, as any user can map executable: the reader refuses
them in bounded time and memory, and `recorder probes` on a process that
maps one goes on."""

from __future__ import annotations

import contextlib
import io
import struct
import time
from pathlib import Path

import pytest
from timing import scaled

from recorder_tracer.target.elf import ElfFile, ElfFormatError
from recorder_tracer.target.notes import NotElfError, probes_in_file

TRUE = Path("/bin/true")


def patched(offset: int, layout: str, *values: int) -> bytes:
    data = bytearray(TRUE.read_bytes())
    struct.pack_into("<" + layout, data, offset, *values)
    return bytes(data)


def section_header(data: bytes, index: int) -> int:
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    return shoff + index * 64


def test_extended_numbering_with_zero_entry_size_is_refused() -> None:
    # e_shnum 0 (count in section 0's sh_size), e_shentsize 0.
    data = patched(0x3A, "HH", 0, 0)
    first = section_header(data, 0)
    data = bytearray(data)
    struct.pack_into("<Q", data, first + 32, 2**62)
    started = time.monotonic()
    with pytest.raises(ElfFormatError):
        ElfFile(io.BytesIO(bytes(data)))
    assert time.monotonic() - started < scaled(1)


@pytest.mark.parametrize("what", ["strtab", "note"])
def test_huge_section_sizes_are_refused(tmp_path: Path, what: str) -> None:
    data = TRUE.read_bytes()
    elf = ElfFile(io.BytesIO(data))
    if what == "strtab":
        index = struct.unpack_from("<H", data, 0x3E)[0]
    else:
        index = next(i for i, s in enumerate(elf.sections) if s.type == 7)
    data = bytearray(data)
    struct.pack_into("<Q", data, section_header(data, index) + 32, 2**62)
    path = tmp_path / "crafted"
    path.write_bytes(bytes(data))
    started = time.monotonic()
    with contextlib.suppress(NotElfError):  # refused, or no probes
        probes_in_file(path)                # never a MemoryError
    assert time.monotonic() - started < scaled(1)


def test_program_header_count_past_the_file_is_refused() -> None:
    data = patched(0x36, "HH", 56, 0xFFFF)
    with pytest.raises(ElfFormatError):
        ElfFile(io.BytesIO(data))


def test_real_binaries_still_read() -> None:
    assert probes_in_file("/usr/bin/python3.11")
