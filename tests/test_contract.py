"""probes/PROBES.md agrees with the headers that are the contract's code.

Every "### `struct X`" table in PROBES.md is checked against the compiler's
layout (tests/progs/core_layout.c prints offsetof and sizeof), the entry
table also against the text of entry.h, and the documented constants and
bpftrace one-liner against the headers and a real run.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from timing import scaled

from recorder_tracer import abi

REPO = Path(__file__).resolve().parent.parent
PROBES_MD = REPO / "probes" / "PROBES.md"
HEADERS = REPO / "probes" / "include" / "recorder"
TYPE_SIZES = {
    "__u8": 1,
    "__s8": 1,
    "__u16": 2,
    "__s16": 2,
    "__u32": 4,
    "__s32": 4,
    "__u64": 8,
    "__s64": 8,
}

Row = tuple[str, int, str]  # field, offset, size (as documented)


def documented_tables() -> dict[str, list[Row]]:
    """struct name -> its table's rows, from PROBES.md."""
    tables: dict[str, list[Row]] = {}
    current: str | None = None
    for line in PROBES_MD.read_text().splitlines():
        heading = re.fullmatch(r"### `struct (\w+)`", line)
        if heading:
            current = heading[1]
            tables[current] = []
            continue
        if current is None:
            continue
        if not line.startswith("|"):
            if tables[current]:
                current = None  # the table ended
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] in ("field", "---"):
            continue
        tables[current].append((cells[0], int(cells[1]), cells[2]))
    return tables


@pytest.fixture(scope="module")
def compiled(progs: Path) -> dict[str, list[tuple[str, int, str]]]:
    """struct name -> (field, offset, size) from the compiler; "sizeof" last."""
    output = subprocess.run(
        [str(progs / "core_layout")], capture_output=True, text=True, check=True
    ).stdout
    layout: dict[str, list[tuple[str, int, str]]] = {}
    for line in output.splitlines():
        words = line.split()
        if words[1] == "sizeof":
            layout.setdefault(words[0], []).append(("sizeof", int(words[2]), ""))
        else:
            layout.setdefault(words[0], []).append((words[1], int(words[2]), words[3]))
    return layout


def header_defines() -> dict[str, int]:
    defines = {}
    for header in HEADERS.glob("*.h"):
        for name, value in re.findall(
            r"^#define (RECORDER_\w+)\s+(0x[0-9a-fA-F]+|\d+)u?l?l?\b",
            header.read_text(),
            re.MULTILINE,
        ):
            defines[name] = int(value, 0)
    return defines


def entry_fields_from_header() -> list[Row]:
    """(field, offset, size) of struct recorder_record, read from entry.h."""
    text = (HEADERS / "entry.h").read_text()
    body = re.search(r"struct recorder_record \{(.*?)\n\};", text, re.DOTALL)
    assert body, "struct recorder_record not found in entry.h"
    defines = header_defines()
    fields: list[Row] = []
    offset = 0
    for type_name, name, count in re.findall(
        r"^\s*(__[us]\d+)\s+(\w+)(?:\[(\w+)\])?;", body[1], re.MULTILINE
    ):
        element = TYPE_SIZES[type_name]
        offset = (offset + element - 1) // element * element
        size = element * (defines[count] if count else 1)
        fields.append((name, offset, str(size)))
        offset += size
    return fields


def test_probes_md_documents_every_contract_struct() -> None:
    assert set(documented_tables()) == {
        "recorder_record",
        "recorder_registry",
        "recorder_channels",
        "recorder_topic",
        "recorder_shard",
        "recorder_share_block",
        "recorder_share_file",
        "recorder_share_topic",
    }


@pytest.mark.parametrize("struct", sorted(documented_tables()))
def test_field_table_matches_compiled_layout(
    compiled: dict[str, list[tuple[str, int, str]]], struct: str
) -> None:
    layout = compiled[struct]
    *fields, (_, sizeof, _) = layout
    entry_size = compiled["recorder_record"][-1][1]
    flexible = f"{entry_size} \N{MULTIPLICATION SIGN} capacity"
    expected = [
        (name, offset, flexible if size == "-" else size)
        for name, offset, size in fields
    ]
    assert documented_tables()[struct] == expected
    _, last_offset, last_size = fields[-1]
    end = last_offset + (0 if last_size == "-" else int(last_size))
    assert end == sizeof, f"{struct}: fields must cover the struct (no tail pad)"


def test_entry_table_matches_entry_header_text() -> None:
    assert documented_tables()["recorder_record"] == entry_fields_from_header()


def test_entry_size_constant_matches_layout(
    compiled: dict[str, list[tuple[str, int, str]]],
) -> None:
    assert header_defines()["RECORDER_ENTRY_SIZE"] == compiled["recorder_record"][-1][1]
    assert "fixed-size entry of 144 bytes" in PROBES_MD.read_text()


def test_documented_constants_match_headers() -> None:
    # "`NAME` = value" or "`NAME` (value)", possibly across a line break.
    documented = re.findall(
        r"`(RECORDER_\w+)`\s+(?:=\s+|\()(0x[0-9a-f]+|\d+)", PROBES_MD.read_text()
    )
    assert {name for name, _ in documented} >= {
        "RECORDER_ENTRY_VERSION",
        "RECORDER_MAX_SHARDS",
        "RECORDER_MAX_TOPICS",
        "RECORDER_REGISTRY_MAGIC",
        "RECORDER_SHARE_MAGIC",
        "RECORDER_SHARE_BLOCK_MAGIC",
        "RECORDER_SHARE_VERSION",
    }
    defines = header_defines()
    for name, value in documented:
        assert defines[name] == int(value, 0), name


def test_documented_argument_kinds_match_enum() -> None:
    text = (HEADERS / "entry.h").read_text()
    enum = dict(
        (name, int(value))
        for name, value in re.findall(r"(RECORDER_ARG_\w+)\s*=\s*(\d+)", text)
    )
    documented = dict(
        (name, int(value))
        for name, value in re.findall(
            r"^\| `(RECORDER_ARG_\w+)` \| (\d+) \|", PROBES_MD.read_text(), re.MULTILINE
        )
    )
    assert documented == enum
    assert len(enum) == 4


def documented_one_liner() -> str:
    text = PROBES_MD.read_text()
    marker = text.index("<!-- tested: tests/test_contract.py::")
    block = re.search(r"```sh\n(.*?)\n```", text[marker:], re.DOTALL)
    assert block
    return block[1]


@pytest.mark.bpf
def test_documented_bpftrace_one_liner_works(progs: Path) -> None:
    assert (progs / "core_usdt").exists()
    result = subprocess.run(
        documented_one_liner(),
        shell=True,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=scaled(120),
    )
    assert result.returncode == 0, result.stderr
    printed = [line for line in result.stdout.splitlines() if "args[0]=" in line]
    assert printed == [f"value %d half %.1f: args[0]={3 * i + 1}" for i in range(23)]
    assert "@records: 23" in result.stdout.splitlines()


def test_documented_magic_spellings_match_their_bytes() -> None:
    """A magic's ("TEXT") is what its value looks like in memory."""
    spelled = re.findall(r"= (0x[0-9a-f]+) \(\"([^\"]+)\"\)", PROBES_MD.read_text())
    assert len(spelled) == 3
    for value, text in spelled:
        number = int(value, 16)
        width = 8 if number > 0xFFFFFFFF else 4
        in_memory = number.to_bytes(width, "little")
        assert in_memory == text.replace("\\0", "\0").encode(), value


def test_documented_probe_registers_match_the_notes(progs: Path) -> None:
    # PROBES.md's table of the probe's arguments, in order, is what every
    # note of a built program says (bpftrace's test reads their values).
    documented = re.findall(r"^  \| arg(\d) \| `%(\w+)` \|", PROBES_MD.read_text(),
                            re.MULTILINE)
    assert [int(index) for index, _ in documented] == list(range(8))
    expected = " ".join(f"8@%{register}" for _, register in documented)
    notes = subprocess.run(["readelf", "-n", str(progs / "core_usdt")],
                           capture_output=True, text=True, check=True).stdout
    arguments = re.findall(r"Arguments: (.*)", notes)
    assert arguments and all(found == expected for found in arguments)


# -- recorder_tracer/abi.py: the tracer's one copy of these numbers ----------

BPF_HEADERS = REPO / "tracer" / "recorder_tracer" / "kernel" / "bpf"


def c_constants(path: Path) -> dict[str, int]:
    """#define NAME number and enum `NAME = number` of one header."""
    text = path.read_text()
    found = {name: int(value, 0) for name, value in re.findall(
        r"^#define (\w+)\s+(0x[0-9a-fA-F]+|\d+)u?l?l?\b", text, re.MULTILINE)}
    found.update({name: int(value, 0) for name, value in re.findall(
        r"^\s*(\w+)\s*=\s*(0x[0-9a-fA-F]+|\d+),", text, re.MULTILINE)})
    return found


def header_path(name: str) -> Path:
    return (REPO / "probes" / "include" / name if name.startswith("recorder/")
            else BPF_HEADERS / name)


@pytest.mark.parametrize("name", sorted(abi.HEADER_NAMES))
def test_abi_constant_matches_its_header(name: str) -> None:
    header, c_name = abi.HEADER_NAMES[name]
    assert c_constants(header_path(header))[c_name] == getattr(abi, name)


@pytest.mark.parametrize("name", sorted(abi.COUNTER_ENUMS))
def test_abi_counter_names_follow_their_enum(name: str) -> None:
    header, prefix = abi.COUNTER_ENUMS[name]
    constants = c_constants(header_path(header))
    names = getattr(abi, name)
    assert [constants[prefix + counter.upper()] for counter in names] == \
        list(range(len(names)))
    assert constants[prefix + "COUNT"] == len(names)


def test_abi_layouts_match_the_compiler(
        compiled: dict[str, list[tuple[str, int, str]]]) -> None:
    offsets = {struct: {field: offset for field, offset, _ in rows}
               for struct, rows in compiled.items()}
    assert abi.ENTRY.size == offsets["recorder_record"]["sizeof"] == abi.ENTRY_SIZE
    assert offsets["recorder_topic"]["armed"] == abi.TOPIC_ARMED_OFFSET
    assert offsets["recorder_topic"]["shards"] == abi.TOPIC_SHARDS_OFFSET
    assert abi.SHARD_HEADER.size <= offsets["recorder_shard"]["sizeof"]
