"""Every topic is a USDT probe `recorder:<topic>` with its own semaphore."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from timing import scaled

# Every topic defined has a probe, recorded into or not: RECORDER_DEFINE
# adds the site recorder_append* fires (core_spec records only `traced`,
# core_share never `unused`).
CORE_TOPICS = {"recorder_core", "recorder_signals"}
PROGRAM_TOPICS = {
    "core_ring": {"ring", "hammer", "churn"},
    "core_spec": {"traced", "net_send", "net_recv", "disk_io", "Mixed_Case"},
    "core_usdt": {"probed", "quiet"},
    "core_share": {"shared", "unused"},
}
NOTE = re.compile(
    r"Provider: (?P<provider>\S+)\s+Name: (?P<name>\S+)\s+"
    r"Location: (?P<location>0x[0-9a-f]+), Base: 0x[0-9a-f]+, "
    r"Semaphore: (?P<semaphore>0x[0-9a-f]+)\s+Arguments: (?P<arguments>.*)"
)


def notes(binary: Path) -> list[dict[str, str]]:
    output = subprocess.run(
        ["readelf", "-n", str(binary)], capture_output=True, text=True, check=True
    ).stdout
    return [match.groupdict() for match in NOTE.finditer(output)]


def section(binary: Path, name: str) -> tuple[int, int] | None:
    """(address, size) of a section, or None."""
    output = subprocess.run(
        ["readelf", "-SW", str(binary)], capture_output=True, text=True, check=True
    ).stdout
    for line in output.splitlines():
        fields = line.replace("[ ", "[").split()
        if len(fields) > 5 and fields[1] == name:
            return int(fields[3], 16), int(fields[5], 16)
    return None


@pytest.mark.parametrize("program", sorted(PROGRAM_TOPICS))
def test_every_topic_has_a_usdt_probe(progs: Path, program: str) -> None:
    found = notes(progs / program)
    assert {note["provider"] for note in found} == {"recorder"}
    assert {note["name"] for note in found} == PROGRAM_TOPICS[program] | CORE_TOPICS


@pytest.mark.parametrize("program", sorted(PROGRAM_TOPICS))
def test_probe_passes_entry_and_its_words_in_fixed_registers(
    progs: Path, program: str
) -> None:
    # probes/PROBES.md, "USDT probes": the entry's address, args[0],
    # args[1], timestamp, (tid, topic_id), (arg_types, cpu, nargs, flags),
    # args[2], args[3].
    for note in notes(progs / program):
        assert note["arguments"] == (
            "8@%rax 8@%rdx 8@%rcx 8@%rsi 8@%rdi 8@%r8 8@%r9 8@%r10"), note


@pytest.mark.parametrize("program", sorted(PROGRAM_TOPICS))
def test_each_topic_has_its_own_semaphore_in_probes_section(
    progs: Path, program: str
) -> None:
    probes = section(progs / program, ".probes")
    assert probes is not None, ".probes section missing"
    start, size = probes
    semaphores: dict[str, set[int]] = {}
    for note in notes(progs / program):
        semaphores.setdefault(note["name"], set()).add(int(note["semaphore"], 16))
    for name, addresses in semaphores.items():
        assert len(addresses) == 1, f"{name}: one semaphore for all its sites"
        (address,) = addresses
        assert address != 0
        assert start <= address < start + size, f"{name}: outside .probes"
    symbols = symbol_addresses(progs / program)
    assert {name: symbols[f"recorder_{name}_semaphore"] for name in semaphores} == {
        name: address for name, (address,) in semaphores.items()
    }


def symbol_addresses(binary: Path) -> dict[str, int]:
    output = subprocess.run(
        ["nm", str(binary)], capture_output=True, text=True, check=True
    ).stdout
    return {
        fields[2]: int(fields[0], 16)
        for fields in map(str.split, output.splitlines())
        if len(fields) == 3
    }


def bpftrace(program: str, command: str) -> tuple[dict[str, int], str]:
    """Runs bpftrace on `command`; returns its maps and the command's stdout."""
    result = subprocess.run(
        ["bpftrace", "-f", "json", "-e", program, "-c", command],
        capture_output=True,
        text=True,
        timeout=scaled(120),
    )
    assert result.returncode == 0, result.stderr
    maps: dict[str, int] = {}
    other = []
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            message = json.loads(line)
            if message["type"] == "map":
                maps.update(message["data"])
        else:
            other.append(line)
    return maps, "\n".join(other)


@pytest.mark.bpf
def test_bpftrace_counts_every_record_and_reads_arguments(progs: Path) -> None:
    binary = progs / "core_usdt"
    program = (
        f"usdt:{binary}:recorder:probed {{"
        " @count = count();"
        " @sum = sum(*(int64 *)(arg0 + 48));"  # args[0]
        " @own_tid = sum(*(uint32 *)(arg0 + 16) == tid);"
        " @nargs = max(*(uint8 *)(arg0 + 30));"
        " @stamped_later = sum(*(uint64 *)arg0 > nsecs);"
        # The register copies equal the entry's words (no memory needed).
        " @sum_from_register = sum(arg1);"
        " @register_timestamp = sum(arg3 == *(uint64 *)arg0);"
        " @register_topic = sum((arg4 >> 32) == *(uint32 *)(arg0 + 20));"
        " @register_nargs = max((arg5 >> 48) & 0xff);"
        "}"
    )
    maps, output = bpftrace(program, f"{binary} 23")
    # 23 records of 3 * i + 1: 3 * 253 + 23.
    assert maps == {
        "@count": 23,
        "@sum": 782,
        "@own_tid": 23,
        "@nargs": 2,
        "@stamped_later": 0,  # entry time <= bpf_ktime_get_ns: one clock
        "@sum_from_register": 782,
        "@register_timestamp": 23,
        "@register_topic": 23,
        "@register_nargs": 2,
    }
    assert output.strip() == "probed armed 1 quiet armed 0"


@pytest.mark.bpf
def test_bpftrace_sees_records_of_recorder_append_as_of_record(
    progs: Path,
) -> None:
    # The seed's out-of-line recording fires the topic's probe too, with the
    # same entry and register copies as RECORD's.
    binary = progs / "core_usdt"
    program = (
        f"usdt:{binary}:recorder:probed {{"
        " @count = count();"
        " @sum = sum(*(int64 *)(arg0 + 48));"
        " @sum_from_register = sum(arg1);"
        " @second = sum(arg2);"
        " @register_topic = sum((arg4 >> 32) == *(uint32 *)(arg0 + 20));"
        " @own_tid = sum(*(uint32 *)(arg0 + 16) == tid);"
        "}"
    )
    maps, output = bpftrace(program, f"{binary} 23 append")
    assert maps == {
        "@count": 23,
        "@sum": 782,
        "@sum_from_register": 782,
        "@second": 253,     # 0 + 1 + ... + 22
        "@register_topic": 23,
        "@own_tid": 23,
    }
    assert output.strip() == "probed armed 1 quiet armed 0"


def test_unattached_probe_semaphores_stay_zero(progs: Path) -> None:
    result = subprocess.run(
        [str(progs / "core_usdt"), "23"], capture_output=True, text=True,
        timeout=scaled(30),
    )
    assert result.stdout == "probed armed 0 quiet armed 0\n"
