"""The seed library's shared-memory channels, recorder_info and recorder_append.

tests/progs/seed_chans.c uses only names of c3d/recorder's recorder.h
(recorder_chans_*, recorder_chan_*, recorder_export_file, recorder_list,
RECORDER_INFO, recorder_append*, recorder_activate): one process writes a
channels file, another reads it back exactly. A channels file is input from
another process: damaged ones must be refused or read in part, never crash
the reader. Offsets below are those of probes/src/chans.c's format, which
probes/PROBES.md documents.
"""

from __future__ import annotations

import os
import random
import re
import struct
import subprocess
from pathlib import Path

import pytest
from helpers.core import run
from timing import scaled

HEADER_BYTES = 4096
X_BLOCK = HEADER_BYTES                      # the first channel made
COUNT_BLOCK = X_BLOCK + 1920                # 128 + 64 items * 16 + 3 * 256
RING = 64                                   # offsetof(struct chan_block, ring)
X_VALUES = " ".join(f"{i * 0.5:g}" for i in range(23))
COUNT_VALUES = " ".join(str(i * i - 100) for i in range(7, 23))
PROBE_LINE = re.compile(r"(opened|refused) channels (\d+) values (\d+)\n")


def start(progs: Path, mode: str, path: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    return subprocess.Popen([str(progs / "seed_chans"), mode, str(path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def ask(process: subprocess.Popen[str], line: str, answers: int) -> list[str]:
    """Send `line`, return the next `answers` lines of output."""
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()
    return [process.stdout.readline() for _ in range(answers)]


@pytest.fixture
def written(progs: Path, tmp_path: Path) -> Path:
    """A channels file as the writer leaves it: x holds 23 values, count the
    last 16 of 23."""
    path = tmp_path / "chans"
    result = subprocess.run([str(progs / "seed_chans"), "write", str(path)],
                            input="", capture_output=True, text=True,
                            timeout=scaled(30))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ready\n"
    return path


def test_second_process_reads_the_channels_exactly_while_they_are_written(
    progs: Path, tmp_path: Path,
) -> None:
    path = tmp_path / "chans"
    writer = start(progs, "write", path)
    assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
    reader = start(progs, "read", path)
    assert reader.stdout is not None
    lines = [reader.stdout.readline() for _ in range(7)]
    assert lines == [
        "valid 1\n",
        "all: x count\n",                   # oldest first, as the seed lists
        "none NULL\n",
        "x 'The x value' 'm' REAL size 64 min -1 max 12\n",
        "count 'Squares less 100' 'items' SIGNED size 16 min -100 max 400\n",
        f"x readable 23 read 23: {X_VALUES}\n",
        # 23 written into a ring of 16: the last 16 survive, in order.
        f"count readable 16 read 16: {COUNT_VALUES}\n",
    ]
    assert ask(writer, "more", 1) == ["wrote\n"]
    # The reader's own index: only what came since.
    assert ask(reader, "again", 1) == ["x readable 5 read 5: 11.5 12 12.5 13 13.5\n"]
    assert ask(reader, "again", 1) == ["x readable 0 read 0:\n"]
    for process in (writer, reader):
        assert process.stdin is not None
        process.stdin.close()
        assert process.wait(timeout=scaled(30)) == 0


def test_null_reader_index_is_the_one_kept_in_the_file(
    progs: Path, written: Path,
) -> None:
    result = run(progs / "seed_chans", "shared", str(written))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"x readable 23 read 23: {X_VALUES}",
        "x readable 0 read 0:",
    ]
    # Kept in the file: a later process starts where the first stopped.
    again = run(progs / "seed_chans", "shared", str(written))
    assert again.stdout.splitlines() == ["x readable 0 read 0:"] * 2


def test_a_new_owner_of_the_file_invalidates_open_readers(
    progs: Path, written: Path,
) -> None:
    result = run(progs / "seed_chans", "replace", str(written))
    assert result.stdout == "valid before 1\nvalid after 0\n"


def test_recorder_traces_exports_named_arguments_to_the_export_file(
    progs: Path, tmp_path: Path,
) -> None:
    env = {"RECORDER_SHARE": str(tmp_path),
           "RECORDER_TRACES": "values=x_value,y_value"}
    result = run(progs / "seed_chans", "export", env=env)
    assert result.returncode == 0, result.stderr
    xs = " ".join(f"{i * 1.5:g}" for i in range(23))
    ys = " ".join(str(i - 11) for i in range(23))
    assert result.stdout.splitlines() == [
        "trace is the channel magic: yes",
        "x_value 'Values exported as channels' REAL size 2048",
        f"x_value readable 23 read 23: {xs}",
        "y_value 'Values exported as channels' SIGNED size 2048",
        f"y_value readable 23 read 23: {ys}",
    ]
    # Exported only: nothing printed as it was recorded, and another
    # process reads the same file after this one ended.
    assert "values:" not in result.stderr.split("recorder: dump")[0]
    probe = run(progs / "seed_chans", "probe",
                str(tmp_path / "recorder_chans"))
    assert probe.stdout == "opened channels 2 values 46\n"


def test_recorder_traces_pattern_names_channels_by_topic(
    progs: Path, tmp_path: Path,
) -> None:
    env = {"RECORDER_SHARE": str(tmp_path), "RECORDER_TRACES": "val.*=v"}
    result = run(progs / "seed_chans", "export", env=env)
    assert result.stdout.splitlines()[1:3] == [
        "values/v 'Values exported as channels' REAL size 2048",
        "values/v readable 23 read 23: "
        + " ".join(f"{i * 1.5:g}" for i in range(23)),
    ]


def test_recorder_info_list_and_append_record_as_the_seed(progs: Path) -> None:
    result = run(progs / "seed_chans", "info")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "appended: Records made with recorder_append (trace 0)",
        "values: Values exported as channels (trace 0)",
        "indices 0 1",
        "tweak 23",
    ]
    dumped = re.findall(r"^(\S+): \[[\d.]+ \d+\] appended: (.*)$",
                        result.stderr, re.MULTILINE)
    assert dumped == [
        # "file:line:" at the head of the format is the record's location.
        ("seed_chans.c:23", "four -4 args 0.500000 z"),
        ("seed_chans.c:29", "eight 1 2 3 4 5 6 7 8"),
        ("info_mode", "twelve 1 2 3 5 7 11 13 17 19 23 29 31"),   # no head
        ("seed_chans.c:31", "fast abc"),
        ("seed_chans.c:37", "fast2    42|"),
        ("seed_chans.c:41", "fast3 end"),
    ]


def probe(progs: Path, path: Path) -> tuple[str, int, int]:
    result = run(progs / "seed_chans", "probe", str(path))
    assert result.returncode == 0, (result.returncode, result.stderr)
    match = PROBE_LINE.fullmatch(result.stdout)
    assert match, result.stdout
    return match[1], int(match[2]), int(match[3])


def patched(path: Path, offset: int, fmt: str, *values: int) -> Path:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, *values)
    damaged = path.with_name(f"{path.name}.{offset}.{values[0] & 0xffff}")
    damaged.write_bytes(bytes(data))
    return damaged


@pytest.mark.parametrize("damage, expected", [
    # The newest channel (count) is listed first in the file; damage to it
    # ends the walk, damage to x (older) loses x only.
    ((COUNT_BLOCK + RING, "<Q", 1 << 60), ("opened", 0, 0)),     # ring size
    ((COUNT_BLOCK + RING + 8, "<Q", 0), ("opened", 0, 0)),      # item size
    ((COUNT_BLOCK + 16, "<Q", 1 << 62), ("opened", 0, 0)),      # name offset
    ((X_BLOCK + 16, "<Q", X_BLOCK + 8), ("opened", 1, 16)),     # name in ring
    ((COUNT_BLOCK + 8, "<Q", COUNT_BLOCK), ("opened", 1, 16)),  # next: itself
    ((COUNT_BLOCK + 8, "<Q", COUNT_BLOCK + 64), ("opened", 1, 16)),
    ((16, "<Q", 1 << 63), ("opened", 0, 0)),                    # head
    ((16, "<Q", COUNT_BLOCK + 8), ("opened", 0, 0)),            # misaligned
    ((0, "<I", 0xC0DABABE), ("refused", 0, 0)),                 # 32-bit magic
    ((4, "<I", 0x010006), ("refused", 0, 0)),                   # version
    # Indices from another process: each read stays within the ring.
    # A writer index behind the reader's: nothing counts as overwritten.
    ((COUNT_BLOCK + RING + 24, "<Q", (1 << 64) - 1), ("opened", 2, 23 + 23)),
    # A commit index behind the reader's: nothing is readable.
    ((COUNT_BLOCK + RING + 32, "<Q", (1 << 64) - 5), ("opened", 2, 23)),
    # One far ahead: each read still returns at most the ring's 16, until
    # the probe stops at 100000 values.
    ((COUNT_BLOCK + RING + 32, "<Q", 1 << 62), ("opened", 2, 100007)),
])
def test_damaged_channels_files_are_refused_or_read_in_bounds(
    progs: Path, written: Path, damage: tuple[int, str, int],
    expected: tuple[str, int, int],
) -> None:
    assert probe(progs, written) == ("opened", 2, 23 + 16)
    offset, fmt, value = damage
    assert probe(progs, patched(written, offset, fmt, value)) == expected


def test_truncated_and_randomly_damaged_files_never_crash_the_reader(
    progs: Path, written: Path,
) -> None:
    data = written.read_bytes()
    damaged = written.with_name("damaged")
    for length in (0, 3, 16, HEADER_BYTES - 1, HEADER_BYTES, X_BLOCK + 100,
                   COUNT_BLOCK + 127, COUNT_BLOCK + 500, len(data) - 1):
        damaged.write_bytes(data[:length])
        outcome, channels, _ = probe(progs, damaged)
        # The header's fields fit in 72 bytes; channels cut short are lost.
        assert outcome == ("refused" if length < 72 else "opened"), length
        assert channels <= (2 if length > COUNT_BLOCK else 0), length
    chance = random.Random(23)
    for _ in range(60):
        mutated = bytearray(data)
        for _ in range(chance.randint(1, 8)):
            where = chance.choice((0, X_BLOCK, COUNT_BLOCK))
            mutated[where + chance.randrange(192)] = chance.randrange(256)
        damaged.write_bytes(bytes(mutated))
        probe(progs, damaged)


def test_open_refuses_a_link_and_new_replaces_it_without_writing_through(
    progs: Path, written: Path, tmp_path: Path,
) -> None:
    link = tmp_path / "link"
    link.symlink_to(written)
    assert probe(progs, link) == ("refused", 0, 0)
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    planted = tmp_path / "planted"
    planted.symlink_to(target)
    result = subprocess.run([str(progs / "seed_chans"), "write", str(planted)],
                            input="", capture_output=True, text=True,
                            timeout=scaled(30))
    assert result.returncode == 0, result.stderr
    assert target.read_text() == "keep me\n"
    assert not planted.is_symlink()
    assert probe(progs, planted) == ("opened", 2, 23 + 16)
