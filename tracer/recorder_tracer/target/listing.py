"""List the USDT probes of processes and files: `recorder probes`.

One row per probe of a file (its sites counted, as tplist's "locations"),
recorder topics first and then every other provider. For a process, a row
also shows the semaphore's current value (how many tracers armed it), and a
recorder topic's ring size and trace value from the process's registry.

    rows = list_probes(["1234", "/usr/bin/python3.11"])
    print(render(rows), end="")
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from typing import Any

from recorder_tracer.errors import TracerError
from recorder_tracer.target import notes
from recorder_tracer.target.dynamic import DYNAMIC_PROBE, read_armed, runtime_topics
from recorder_tracer.target.memory import (
    ProcessImage,
    Topic,
    load_bias,
    read_maps,
)
from recorder_tracer.terminal import escape_controls

SEMAPHORE_SIZE = 2      # unsigned short, as <sys/sdt.h> and the core define it


@dataclass(frozen=True)
class ProbeRow:
    """One probe of one file, as `recorder probes` shows it.

    `pid` is None for a file given by path. `semaphore_value` is the
    semaphore's current value in that process (None: no process, no
    semaphore, or unreadable); `ring` and `trace` are a recorder topic's
    ring size and trace value from the registry (None elsewhere). A
    run-time topic (`runtime`, made by Python) has no probe of its own: it
    fires the shared probe recorder_dynamic of `path`, and its
    `semaphore_value` is its armed flag (1 armed, 0 not).
    """

    pid: int | None
    path: str
    provider: str
    name: str
    sites: int
    has_semaphore: bool
    semaphore_value: int | None = None
    ring: int | None = None
    trace: int | None = None
    arguments: tuple[str, ...] = ()
    runtime: bool = False

    @property
    def full_name(self) -> str:
        """Return "provider:name"."""
        return f"{self.provider}:{self.name}"

    @property
    def is_recorder(self) -> bool:
        """True for a recorder topic's probe."""
        return self.provider == notes.RECORDER_PROVIDER

    @property
    def semaphore_text(self) -> str:
        """The SEM column: the value in a process, else yes or no.

        >>> ProbeRow(None, "/bin/x", "p", "n", 1, True).semaphore_text
        'yes'
        >>> ProbeRow(7, "/bin/x", "p", "n", 1, True, semaphore_value=2).semaphore_text
        '2'
        """
        if self.semaphore_value is not None:
            return str(self.semaphore_value)
        return "yes" if self.has_semaphore else "no"

    def as_json(self) -> dict[str, Any]:
        """The row as a JSON object (the text's columns, spelled out).

        >>> ProbeRow(None, "/bin/x", "p", "n", 2, False).as_json()["probe"]
        'n'
        """
        return {
            "pid": self.pid,
            "path": self.path,
            "file": os.path.basename(self.path),
            "provider": self.provider,
            "probe": self.name,
            "sites": self.sites,
            "semaphore": self.has_semaphore,
            "semaphore_value": self.semaphore_value,
            "ring": self.ring,
            "trace": self.trace,
            "arguments": list(self.arguments),
            "runtime": self.runtime,
        }


def list_probes(targets: list[str]) -> list[ProbeRow]:
    """Rows for PIDs and paths in `targets` (all recorder processes if none),
    recorder topics first, each group in the order of the targets.

    Raises TracerError for a PID that does not exist, a path that does not
    exist or is not an ELF executable or shared object.
    """
    rows: list[ProbeRow] = []
    if not targets:
        for pid in notes.mapped_recorder_processes():
            # One that exits between the scan and now is simply not listed.
            with contextlib.suppress(TracerError):
                rows.extend(process_rows(pid))
    for target in targets:
        if target.isdigit():
            rows.extend(process_rows(int(target)))
        else:
            rows.extend(file_rows(target))
    return sorted(rows, key=lambda row: not row.is_recorder)   # stable


def file_rows(path: str) -> list[ProbeRow]:
    """One row per probe of the ELF file at `path`.

    >>> [row.full_name for row in file_rows("/usr/bin/python3.11")][:2]
    ['python:audit', 'python:function__entry']
    """
    try:
        probes = notes.probes_in_file(path)
    except notes.NotElfError as error:
        raise TracerError(str(error)) from None
    except OSError as error:
        raise TracerError(f"{path}: {error.strerror}") from None
    return [_row(None, path, group) for group in notes.group_probes(probes)]


def process_rows(pid: int) -> list[ProbeRow]:
    """One row per probe of each file process `pid` maps, with semaphore
    values and recorder topics' ring sizes and trace values."""
    try:
        mapped = notes.mapped_files(pid, executable_only=True)
        mappings = read_maps(pid)
    except (notes.ProcessGone, FileNotFoundError, ProcessLookupError):
        raise TracerError(f"process {pid} does not exist") from None
    except PermissionError:
        raise TracerError(f"cannot read process {pid}: permission denied") from None
    rows: list[ProbeRow] = []
    topics = None
    for file in mapped:
        try:
            probes = notes.probes_in_mapped(file)
        except (OSError, notes.NotesError):
            continue    # not ELF (or gone, or replaced): no probes to list
        if not probes:
            continue
        bias = load_bias(mappings, file.open_path)
        for group in notes.group_probes(probes):
            row = _row(pid, file.path, group)
            value = _semaphore_value(pid, bias, group.semaphore)
            ring = trace = None
            if row.is_recorder:
                if topics is None:
                    topics = _topics(pid)
                topic = topics.get(group.name)
                if topic is not None:
                    ring, trace = topic.size, topic.trace
            rows.append(replace(row, semaphore_value=value, ring=ring,
                                trace=trace))
    return rows + _runtime_rows(pid, rows, topics)


def _runtime_rows(pid: int, rows: list[ProbeRow],
                  topics: dict[str, Topic] | None) -> list[ProbeRow]:
    """Rows of the run-time topics of `pid`, after its probes (none unless
    it maps the shared probe)."""
    shared = [row for row in rows if row.is_recorder and row.name == DYNAMIC_PROBE]
    if not shared or topics is None:
        return []
    named = {row.name for row in rows if row.is_recorder}
    return [ProbeRow(pid, shared[0].path, notes.RECORDER_PROVIDER, topic.name, 0,
                     False, semaphore_value=_armed_value(pid, topic),
                     ring=topic.size, trace=topic.trace, runtime=True)
            for topic in runtime_topics(topics.values(), named)]


def _armed_value(pid: int, topic: Topic) -> int | None:
    armed = read_armed(pid, topic)
    return None if armed is None else int(armed)


def _topics(pid: int) -> dict[str, Topic]:
    """The topics of process `pid`'s registry by name (none once it is gone)."""
    try:
        return {topic.name: topic for topic in ProcessImage.of(pid).topics()}
    except OSError:
        return {}


def _row(pid: int | None, path: str, group: notes.ProbeGroup) -> ProbeRow:
    return ProbeRow(pid, path, group.provider, group.name, len(group.sites),
                    group.semaphore != 0,
                    arguments=tuple(site.arguments for site in group.sites))


def _semaphore_value(pid: int, bias: int | None, semaphore: int) -> int | None:
    """The semaphore at load bias + its link-time address, read live."""
    if not semaphore or bias is None:
        return None
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:
            memory.seek(bias + semaphore)
            data = memory.read(SEMAPHORE_SIZE)
    except (OSError, ValueError, OverflowError):
        return None
    if len(data) != SEMAPHORE_SIZE:
        return None
    return int.from_bytes(data, "little")


# --------------------------------------------------------------------------
# Text

# (title, width, right-aligned); PROBE widens to its longest name.
COLUMNS: tuple[tuple[str, int, bool], ...] = (
    ("PID", 7, False), ("FILE", 16, False), ("PROBE", 31, False),
    ("SITES", 5, True), ("SEM", 3, True), ("RING", 5, True), ("TRACE", 5, True),
)


def render(rows: list[ProbeRow]) -> str:
    """The rows as bcc-style text columns under a header, newline-ended.

    >>> print(render([ProbeRow(None, "/bin/app", "recorder", "tick", 1, True)]),
    ...       end="")  # doctest: +NORMALIZE_WHITESPACE
    PID FILE PROBE SITES SEM RING TRACE
    - app recorder:tick 1 yes - -
    """
    widths = [width for _, width, _ in COLUMNS]
    # File names and probe names are the process's and its ELF's to choose.
    widths[2] = max([widths[2], *(len(escape_controls(row.full_name))
                                  for row in rows)])
    lines = [_line([title for title, _, _ in COLUMNS], widths)]
    for row in rows:
        lines.append(_line([
            "-" if row.pid is None else str(row.pid),
            escape_controls(os.path.basename(row.path))[:widths[1]],
            escape_controls(row.full_name),
            "rt" if row.runtime else str(row.sites),
            row.semaphore_text,
            "-" if row.ring is None else str(row.ring),
            "-" if row.trace is None else str(row.trace),
        ], widths))
    return "".join(line + "\n" for line in lines)


def _line(values: list[str], widths: list[int]) -> str:
    cells = [value.rjust(width) if right else value.ljust(width)
             for value, width, (_, _, right) in zip(values, widths, COLUMNS,
                                                    strict=True)]
    return " ".join(cells).rstrip()
