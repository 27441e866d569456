"""USDT probes of real files and processes, checked against readelf and bcc."""

from __future__ import annotations

import doctest
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from timing import scaled

from recorder_tracer.target import elf, notes
from recorder_tracer.target.notes import NotElfError, ProcessGone, UsdtProbe

BUILD = Path(__file__).resolve().parent.parent / "build"
LIBRECORDER = BUILD / "librecorder.so"
PYTHON = Path("/usr/bin/python3.11")
LIBSTDCXX = Path("/usr/lib/x86_64-linux-gnu/libstdc++.so.6")
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def readelf_notes(path: Path) -> list[tuple[str, str, int, int, int, str]]:
    """(provider, name, location, base, semaphore, arguments) per SDT note."""
    text = subprocess.run(["readelf", "-nW", str(path)], check=True,
                          capture_output=True, text=True).stdout
    pattern = re.compile(
        r"Provider: (\S+)\s+Name: (\S+)\s+Location: (0x[0-9a-f]+), "
        r"Base: (0x[0-9a-f]+), Semaphore: (0x[0-9a-f]+)\s+Arguments: ?([^\n]*)")
    return [(p, n, int(loc, 16), int(base, 16), int(sem, 16), args.strip())
            for p, n, loc, base, sem, args in pattern.findall(text)]


def readelf_sections(path: Path) -> dict[str, tuple[int, int, int]]:
    """Section name -> (address, file offset, size), from readelf -S."""
    text = subprocess.run(["readelf", "-SW", str(path)], check=True,
                          capture_output=True, text=True).stdout
    pattern = re.compile(r"\]\s+(\S+)\s+\S+\s+([0-9a-f]{8,})\s+([0-9a-f]{6,})"
                         r"\s+([0-9a-f]{6,})")
    return {name: (int(a, 16), int(o, 16), int(s, 16))
            for name, a, o, s in pattern.findall(text)}


def section_offset(sections: dict[str, tuple[int, int, int]], address: int) -> int:
    """File offset of an address through the allocated section holding it."""
    for name, (start, offset, size) in sections.items():
        if start and start <= address < start + size and name != ".bss":
            return address - start + offset
    raise AssertionError(f"no section holds {address:#x}")


def has_binary(path: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is not installed")


@pytest.fixture
def wait_prog(progs: Path) -> Path:
    return progs / "tracer_wait"


def start_waiting(command: list[str], ready: str = "ready") -> subprocess.Popen[str]:
    """Start a program that prints `ready` and then waits for stdin to close."""
    process = subprocess.Popen(command, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == ready
    return process


def finish(process: subprocess.Popen[str]) -> int:
    """Close its stdin (it exits) and its stdout; return its status."""
    assert process.stdin is not None and process.stdout is not None
    process.stdin.close()
    status = process.wait(timeout=scaled(10))
    process.stdout.close()
    return status


@pytest.fixture
def waiting(wait_prog: Path) -> Iterator[subprocess.Popen[str]]:
    process = start_waiting([str(wait_prog)])
    yield process
    finish(process)


@pytest.fixture
def python_with_core() -> Iterator[subprocess.Popen[str]]:
    """Debian's python3.11 (python:* probes) with librecorder.so loaded."""
    if not PYTHON.exists():
        pytest.skip(f"{PYTHON} is not installed")
    code = (f"import ctypes, sys; ctypes.CDLL({str(LIBRECORDER)!r}); "
            "print('ready', flush=True); sys.stdin.read()")
    process = start_waiting([str(PYTHON), "-c", code])
    yield process
    finish(process)


# -- files --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["smoke", "tracer_wait", "librecorder.so",
                                  "python3.11", "libstdc++.so.6"])
def test_probes_match_readelf_notes_and_sections(name: str, progs: Path) -> None:
    path = {"librecorder.so": LIBRECORDER, "python3.11": PYTHON,
            "libstdc++.so.6": LIBSTDCXX}.get(name, progs / name)
    if not path.exists():
        pytest.skip(f"{path} is not installed")
    expected = readelf_notes(path)
    sections = readelf_sections(path)
    base = sections[".stapsdt.base"][0]
    probes = notes.probes_in_file(path)

    assert len(probes) == len(expected) > 0
    assert sorted((p.provider, p.name, p.address, p.semaphore, p.arguments)
                  for p in probes) == sorted(
        (prov, name, loc + base - note_base, sem, args)
        for prov, name, loc, note_base, sem, args in expected)
    data = path.read_bytes()
    for probe in probes:
        assert probe.path == str(path)
        assert probe.file_offset == section_offset(sections, probe.address)
        assert data[probe.file_offset] == 0x90, f"{probe} is not at a 1-byte nop"
        if probe.semaphore:
            assert probe.semaphore_offset == section_offset(sections, probe.semaphore)
            assert probe.semaphore_offset == (probe.semaphore
                                              - sections[".probes"][0]
                                              + sections[".probes"][1])
        else:
            assert probe.semaphore_offset == 0


def test_wait_program_has_its_topics_sites_and_semaphores(wait_prog: Path) -> None:
    groups = {g.full_name: g for g in notes.group_probes(
        notes.probes_in_file(wait_prog))}
    # Each RECORD, and the site RECORDER_DEFINE adds for recorder_append*.
    assert len(groups["recorder:wait_loop"].sites) == 2
    assert len(groups["recorder:wait_edge"].sites) == 3
    semaphores = {g.semaphore_offset for g in groups.values()}
    assert len(semaphores) == len(groups), "one semaphore per topic"
    assert all(site.arguments.startswith("8@%rax ") for g in groups.values()
               for site in g.sites)


def test_shared_library_offsets_differ_from_addresses_where_segments_do(
        tmp_path: Path) -> None:
    # The core linked with 2 MiB pages: its data segment lands 2 MiB past its
    # file offset, whatever the layout of build/librecorder.so happens to be.
    library = tmp_path / "librecorder-shifted.so"
    subprocess.run(["cc", "-shared", "-o", str(library),
                    *sorted(map(str, (BUILD / "obj").glob("*.o"))), "-lpthread",
                    "-Wl,-z,max-page-size=0x200000"], check=True)
    probes = notes.probes_in_file(library)
    sections = readelf_sections(library)
    address, offset, _ = sections[".probes"]
    assert address != offset, "the test needs a data segment shifted in memory"
    assert {p.semaphore_offset - p.semaphore for p in probes} == {offset - address}


@has_binary(PYTHON)
def test_python_probes_come_with_semaphores_and_arguments() -> None:
    probes = {p.name: p for p in notes.probes_in_file(PYTHON)}
    entry = probes["function__entry"]
    assert entry.provider == "python"
    assert entry.semaphore != 0
    # python3.11 is ET_EXEC at 0x400000: text offsets = address - 0x400000
    assert entry.file_offset == entry.address - 0x400000
    assert len(entry.arguments.split()) == 3


@has_binary(LIBSTDCXX)
def test_libstdcxx_probes_have_no_semaphore() -> None:
    probes = notes.probes_in_file(LIBSTDCXX)
    assert {p.full_name for p in probes} >= {"libstdcxx:throw", "libstdcxx:catch"}
    assert all(p.semaphore == 0 and p.semaphore_offset == 0 for p in probes)


@pytest.mark.parametrize("name", ["smoke", "librecorder.so", "python3.11"])
def test_probes_match_bcc(name: str, progs: Path) -> None:
    usdt = pytest.importorskip("bcc").USDT
    path = {"librecorder.so": LIBRECORDER, "python3.11": PYTHON}.get(
        name, progs / name)
    if not path.exists():
        pytest.skip(f"{path} is not installed")
    theirs = {}
    context = usdt(path=str(path))  # keep it: its probes point into it
    for probe in context.enumerate_probes():
        sites = sorted(probe.get_location(i).address
                       for i in range(probe.num_locations))
        theirs[f"{probe.provider.decode()}:{probe.name.decode()}"] = (
            probe.semaphore, sites)
    ours = {g.full_name: (g.semaphore, sorted(s.address for s in g.sites))
            for g in notes.group_probes(notes.probes_in_file(path))}
    assert ours == theirs


def test_prelinked_note_base_moves_the_site_like_libbpf(progs: Path,
                                                        tmp_path: Path) -> None:
    """A note whose base differs from .stapsdt.base (prelink moved the
    sections, not the notes): the site moves by the difference, the
    semaphore does not (libbpf's rule; bcc 0.26 ignores the base)."""
    original = progs / "smoke"
    patched = tmp_path / "smoke"
    sections = readelf_sections(original)
    base = sections[".stapsdt.base"][0]
    _, note_offset, note_size = sections[".note.stapsdt"]
    data = bytearray(original.read_bytes())
    note = bytes(data[note_offset:note_offset + note_size])
    old, new = struct.pack("<Q", base), struct.pack("<Q", base - 0x10)
    assert note.count(old) == len(readelf_notes(original))
    data[note_offset:note_offset + note_size] = note.replace(old, new)
    patched.write_bytes(bytes(data))

    before = notes.probes_in_file(original)
    after = notes.probes_in_file(patched)
    assert {note[3] for note in readelf_notes(patched)} == {base - 0x10}
    assert [(p.address + 0x10, p.file_offset + 0x10, p.semaphore,
             p.semaphore_offset) for p in before] == [
        (p.address, p.file_offset, p.semaphore, p.semaphore_offset) for p in after]


def test_listing_puts_recorder_probes_first() -> None:
    probes = [
        UsdtProbe("/b", "python", "line", 1, 1, 0, 0, ""),
        UsdtProbe("/a", "recorder", "zeta", 2, 2, 0, 0, ""),
        UsdtProbe("/a", "libstdcxx", "throw", 3, 3, 0, 0, ""),
        UsdtProbe("/a", "recorder", "alpha", 4, 4, 0, 0, ""),
    ]
    assert [p.full_name for p in notes.sort_probes(probes)] == [
        "recorder:alpha", "recorder:zeta", "libstdcxx:throw", "python:line"]


def test_file_without_probes_has_none() -> None:
    assert notes.probes_in_file("/bin/true") == []


def test_non_elf_file_is_refused_with_its_name(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    message = rf"^{re.escape(str(text))}: not an ELF file$"
    with pytest.raises(NotElfError, match=message):
        notes.probes_in_file(text)


def test_truncated_elf_is_refused(progs: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut"
    cut.write_bytes((progs / "smoke").read_bytes()[:40])
    with pytest.raises(NotElfError, match="truncated ELF file"):
        notes.probes_in_file(cut)


def test_object_file_is_refused(tmp_path: Path) -> None:
    obj = next((BUILD / "obj").glob("*.o"))
    with pytest.raises(NotElfError, match="neither an executable nor a shared"):
        notes.probes_in_file(obj)


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        notes.probes_in_file(tmp_path / "absent")


def test_rewritten_file_is_parsed_again(progs: Path, tmp_path: Path) -> None:
    target = tmp_path / "app"
    shutil.copyfile(progs / "smoke", target)
    first = {p.name for p in notes.probes_in_file(target)}
    inode = target.stat().st_ino
    shutil.copyfile(progs / "tracer_wait", target)     # same inode, new content
    assert target.stat().st_ino == inode
    second = {p.name for p in notes.probes_in_file(target)}
    assert "smoke" in first and "smoke" not in second
    assert {"wait_loop", "wait_edge"} <= second


# -- processes ------------------------------------------------------------------


def test_process_probes_are_its_files_probes(waiting: subprocess.Popen[str],
                                             wait_prog: Path) -> None:
    found = notes.probes_in_process(waiting.pid)
    assert found == notes.probes_in_file(str(wait_prog))


def test_process_lists_recorder_probes_before_other_providers(
        python_with_core: subprocess.Popen[str]) -> None:
    found = notes.probes_in_process(python_with_core.pid)
    providers = [p.provider for p in found]
    first_other = providers.index("python")
    assert set(providers[:first_other]) == {"recorder"}
    assert "recorder" not in providers[first_other:]
    assert {p.path for p in found if p.is_recorder} == {str(LIBRECORDER)}
    assert {p.path for p in found if p.provider == "python"} == {str(PYTHON)}
    assert [p for p in found if p.is_recorder] == [
        p for p in notes.probes_in_file(LIBRECORDER)]


@root_only
def test_deleted_executable_is_read_through_map_files(
        wait_prog: Path, tmp_path: Path) -> None:
    copy = tmp_path / "gone"
    shutil.copyfile(wait_prog, copy)
    copy.chmod(0o755)
    expected = notes.probes_in_file(copy)
    process = start_waiting([str(copy)])
    try:
        copy.unlink()
        found = notes.probes_in_process(process.pid)
    finally:
        finish(process)
    assert {p.path.rsplit("/", 1)[0] for p in found} == {
        f"/proc/{process.pid}/map_files"}
    assert [(p.name, p.file_offset, p.semaphore_offset) for p in found] == [
        (p.name, p.file_offset, p.semaphore_offset) for p in expected]


def test_gone_process_raises_process_gone() -> None:
    process = subprocess.Popen(["true"])
    process.wait()
    with pytest.raises(ProcessGone, match=rf"^process {process.pid} does not exist$"):
        notes.probes_in_process(process.pid)


def test_mapped_recorder_processes_finds_processes_with_a_core(
        waiting: subprocess.Popen[str],
        python_with_core: subprocess.Popen[str]) -> None:
    plain = subprocess.Popen(["sleep", "30"])
    try:
        found = notes.mapped_recorder_processes()
    finally:
        plain.kill()
        plain.wait()
    assert waiting.pid in found
    assert python_with_core.pid in found
    assert plain.pid not in found
    assert found == sorted(found)


@has_binary(PYTHON)
@pytest.mark.parametrize("module", [notes, elf])
def test_docstring_examples_hold(module: Any) -> None:
    assert doctest.testmod(module).failed == 0
