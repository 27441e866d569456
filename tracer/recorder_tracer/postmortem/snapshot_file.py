"""Snapshot files: write them atomically, list them, read and check them.

A snapshot is one JSON object (`SNAPSHOT_KIND`, version 1): the process
(pid, comm, exe), how it died (signal, si_code, fault address, time), its
last records in order (formatted and raw), its exit status once known, and
its shared-memory rings when it exported them. Files are written as a
temporary file then renamed, mode 0600, so a reader never sees half a file;
a full disk is an error the caller counts, never a crash.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from recorder_tracer.decode.record import Record
from recorder_tracer.errors import TracerError
from recorder_tracer.output.safe_write import write_new_file
from recorder_tracer.output.writer import json_value
from recorder_tracer.target.safe_open import read_untrusted
from recorder_tracer.terminal import json_escaped, printable

SNAPSHOT_KIND = "recorder-snapshot"
SNAPSHOT_VERSION = 1
SUFFIX = ".snapshot.json"
DEFAULT_DIRECTORY = "/var/lib/recorder/snapshots"
MAX_SNAPSHOT_BYTES = 256 << 20     # a snapshot of 256 records is ~100 KB
_REQUIRED = {"kind": str, "version": int, "pid": int, "comm": str,
             "time_ns": int, "records": list}
_RECORD_FIELDS = ("ts", "pid", "tid", "comm", "topic", "where", "message", "cpu")
_RECORD_TYPES = {"ts": int, "pid": int, "tid": int, "comm": str, "topic": str,
                 "where": str, "message": str, "cpu": int}
_NONE = type(None)
# Fields printing and export use beyond the required ones: their types.
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "exe": (str, _NONE), "time": (str, _NONE), "signal_name": (str, _NONE),
    "fault_address": (str, int, _NONE), "exit": (dict, _NONE),
    "shm": (dict, _NONE), "signal": (int, _NONE)}


def signal_name(number: int | None) -> str | None:
    """SIGSEGV for 11; None for None.

    >>> signal_name(11), signal_name(None)
    ('SIGSEGV', None)
    """
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def file_name(pid: int, comm: str, time_ns: int) -> str:
    """The snapshot file name of a process at a time: sortable, unique.

    >>> file_name(42, "my app", 1_500)
    'my_app.42.000000000001500.snapshot.json'
    """
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in comm) or "?"
    return f"{safe}.{pid}.{time_ns:015d}{SUFFIX}"


def write_snapshot(directory: str | Path, name: str, snapshot: dict[str, Any]) -> Path:
    """Write `snapshot` as DIRECTORY/NAME atomically (temporary file, fsync,
    rename), mode 0600, in a directory only root may write (see
    safe_write). Raises OSError (a full disk...) with nothing left behind,
    TracerError for a directory someone else owns."""
    # Compact: with `indent`, json falls back to its pure-Python encoder,
    # ~40 ms for 256 records here (`recorder show --json` indents).
    data = json_escaped(json.dumps(snapshot, ensure_ascii=False, allow_nan=False,
                                   separators=(",", ":"))).encode() + b"\n"
    return write_new_file(directory, name, data)


def record_json(record: Record, raw: dict[str, Any] | None = None) -> dict[str, Any]:
    """A record in a snapshot: formatted fields, arguments, raw entry."""
    value: dict[str, Any] = {name: getattr(record, name) for name in _RECORD_FIELDS}
    value["args"] = [json_value(arg) for arg in record.args]
    if raw is not None:
        value["raw"] = raw
    return value


def json_record(value: dict[str, Any]) -> Record:
    """The Record of a snapshot's record (the inverse of record_json)."""
    return Record(**{name: value[name] for name in _RECORD_FIELDS},
                  args=list(value.get("args", [])))


@dataclass(frozen=True)
class SnapshotSummary:
    """One line of `recorder snapshots`."""

    path: str
    pid: int
    comm: str
    signal: str | None
    time_ns: int
    records: int
    exit: str | None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_snapshot(path: str | Path) -> dict[str, Any]:
    """Read and check a snapshot file; TracerError says what is wrong
    (missing, not JSON, truncated, not a snapshot, a bad field)."""
    try:
        text = read_untrusted(path, MAX_SNAPSHOT_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise TracerError(f"{path}: no such snapshot file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TracerError(f"{path}: cannot read: {error}") from None
    try:
        snapshot = json.loads(text)
    except RecursionError:
        raise TracerError(f"{path}: corrupt snapshot file (nested too deep)") from None
    except ValueError as error:
        if not isinstance(error, json.JSONDecodeError):   # a number too long
            raise TracerError(f"{path}: corrupt snapshot file ({error})") from None
        # A whole file ends with its object's closing brace.
        what = "corrupt" if text.rstrip().endswith("}") else "truncated"
        raise TracerError(f"{path}: {what} snapshot file "
                          f"(invalid JSON at line {error.lineno}, "
                          f"column {error.colno})") from None
    if not isinstance(snapshot, dict) or snapshot.get("kind") != SNAPSHOT_KIND:
        raise TracerError(f"{path}: not a recorder snapshot file")
    for name, kind in _REQUIRED.items():
        if not isinstance(snapshot.get(name), kind):
            raise TracerError(f"{path}: corrupt snapshot file: field {name!r} "
                              f"missing or not a {kind.__name__}")
    if snapshot["version"] != SNAPSHOT_VERSION:
        raise TracerError(f"{path}: snapshot version {snapshot['version']} "
                          f"(this recorder reads {SNAPSHOT_VERSION})")
    for name, kinds in _OPTIONAL.items():
        if not isinstance(snapshot.get(name), kinds):
            raise TracerError(f"{path}: corrupt snapshot file: field {name!r} "
                              "has the wrong type")
    if not isinstance((snapshot.get("exit") or {}).get("description"), (str, _NONE)):
        raise TracerError(f"{path}: corrupt snapshot file: exit description")
    if not isinstance((snapshot.get("shm") or {}).get("records", []), list):
        raise TracerError(f"{path}: corrupt snapshot file: shm records")
    if not all(0 <= snapshot[name] < 1 << 64 for name in ("pid", "time_ns")):
        raise TracerError(f"{path}: corrupt snapshot file: pid or time_ns "
                          "out of range")
    for index, record in enumerate(snapshot["records"]):
        if not isinstance(record, dict) or any(name not in record
                                               for name in _RECORD_FIELDS):
            raise TracerError(f"{path}: corrupt snapshot file: record {index} "
                              "is incomplete")
        for name, kind in _RECORD_TYPES.items():
            value = record[name]
            if (not isinstance(value, kind) or isinstance(value, bool)
                    or (kind is int and not -(1 << 63) <= value < 1 << 64)):
                raise TracerError(f"{path}: corrupt snapshot file: record "
                                  f"{index}: field {name!r} is not a {kind.__name__}"
                                  " in range")
        args = record.get("args", [])
        if not isinstance(args, list) or not all(
                arg is None or (isinstance(arg, (int, float, str))
                                and not isinstance(arg, bool)) for arg in args):
            raise TracerError(f"{path}: corrupt snapshot file: record {index}: "
                              "bad args")
    return snapshot


def list_snapshots(directory: str | Path) -> list[SnapshotSummary]:
    """The snapshots in `directory`, oldest first; unreadable files are
    listed with what is wrong in place of the signal."""
    folder = Path(directory)
    try:
        if not folder.is_dir():
            raise TracerError(f"{directory}: no snapshot directory")
        paths = sorted(folder.glob(f"*{SUFFIX}"))
    except PermissionError:
        raise TracerError(f"{directory}: permission denied (snapshots are "
                          "root's: use sudo)") from None
    found = []
    for path in paths:
        try:
            snapshot = read_snapshot(path)
        except TracerError as error:
            found.append(SnapshotSummary(str(path), 0, "?", f"<{error}>", 0, 0, None))
            continue
        exit_status = snapshot.get("exit") or {}
        found.append(SnapshotSummary(
            str(path), snapshot["pid"], snapshot["comm"],
            snapshot.get("signal_name"), snapshot["time_ns"],
            len(snapshot["records"]), exit_status.get("description")))
    return sorted(found, key=lambda summary: (summary.time_ns, summary.path))


def print_snapshot(snapshot: dict[str, Any], stream: TextIO,
                   last: int | None = None) -> None:
    """Print a snapshot read by read_snapshot: who, how, then its records
    (the `last` ones only, if given) in `recorder trace` columns."""
    from recorder_tracer.output.text import TextPrinter
    records = [json_record(record) for record in snapshot["records"]]
    how = printable(snapshot.get("signal_name") or "snapshot on request")
    if snapshot.get("fault_address"):
        how += f" at {printable(snapshot['fault_address'])}"
    exit_status = (snapshot.get("exit") or {}).get("description", "exit not known")
    # The process chose its name and path (a crafted file, any string).
    stream.write(f"pid {snapshot['pid']} ({printable(snapshot['comm'])}) "
                 f"{printable(snapshot.get('exe'))}\n"
                 f"{how}, {printable(snapshot.get('time'))}; "
                 f"{printable(exit_status)}; {len(records)} records\n")
    printer = TextPrinter(stream)
    printer.fit_topics(record.topic for record in records)
    printer.print_header()
    for record in records[-last:] if last else records:
        printer.write(record)
    shm = snapshot.get("shm")
    if shm:
        stream.write(f"shared-memory rings: {printable(shm.get('path'))}, "
                     f"{len(shm.get('records', []))} records\n")
