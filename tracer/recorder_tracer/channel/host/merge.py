"""Merge every guest a collector wrote into one Chrome trace (Perfetto).

Each guest stream (OUT/<host>/<boot>.<stream>/) becomes one process group
in the trace: its records' processes are tracks under it, named
"HOST: comm (pid)", sorted together (process_sort_index), and its console
lines and snapshots are instant events on a track of their own. Every
event is placed at its host-aligned time, so guests and host share one
timeline; the guest's raw time and the clock's uncertainty are in the
events' args and in "otherData".
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from recorder_tracer.errors import TracerError
from recorder_tracer.terminal import json_escaped

PIDS_PER_GUEST = 1 << 22     # Linux pid_max at most: guest pids stay apart


def streams(out: str | Path) -> list[Path]:
    """The stream folders under a collector's output, in a stable order."""
    root = Path(out)
    if not root.is_dir():
        raise TracerError(f"{out} is not a collector's output directory")
    return sorted(path.parent for path in root.glob("*/*/guest.json")
                  if not path.is_symlink() and not path.parent.is_symlink())


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    if not path.is_file() or path.is_symlink():
        return
    with open(path, encoding="utf-8", errors="replace") as file:
        for line in file:
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue            # a torn last line of a live collector
            if isinstance(value, dict):
                yield value


def merge_chrome(out: str | Path, stream: TextIO) -> int:
    """Write the Chrome trace of every guest under `out`; the event count."""
    events = 0
    first = True
    guests = []

    def emit(event: dict[str, Any]) -> None:
        nonlocal events, first
        text = json_escaped(json.dumps(event, ensure_ascii=False))
        stream.write(("" if first else ",\n") + text)
        first = False
        events += 1

    stream.write('{"traceEvents": [\n')
    for index, folder in enumerate(streams(out)):
        guest = json.loads((folder / "guest.json").read_text())
        name = f"{guest.get('hostname', folder.parent.name)}"
        guests.append({"guest": name, "folder": os.fspath(folder.relative_to(out)),
                       "clock": guest.get("clock", {})})
        base = (index + 1) * PIDS_PER_GUEST
        named: set[int] = set()
        threads: set[int] = set()
        for record in _lines(folder / "records.jsonl"):
            pid = base + int(record.get("pid", 0)) % PIDS_PER_GUEST
            if pid not in named:
                named.add(pid)
                emit({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                      "args": {"name": f"{name}: {record.get('comm')} "
                                       f"({record.get('pid')})"}})
                emit({"name": "process_sort_index", "ph": "M", "pid": pid,
                      "tid": 0, "args": {"sort_index": index}})
            tid = int(record.get("tid", 0))
            if tid not in threads:
                threads.add(tid)
                emit({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                      "args": {"name": f"{record.get('comm')} {tid}"}})
            emit({"name": record.get("topic"), "cat": record.get("provider"),
                  "ph": "i", "s": "t", "ts": record.get("host_ts", 0) / 1000,
                  "pid": pid, "tid": tid,
                  "args": {"message": record.get("message"),
                           "where": record.get("where"),
                           "args": record.get("args"),
                           "guest_ts": record.get("ts")}})
        console = base + PIDS_PER_GUEST - 1
        emit({"name": "process_name", "ph": "M", "pid": console, "tid": 0,
              "args": {"name": f"{name}: console and snapshots"}})
        emit({"name": "process_sort_index", "ph": "M", "pid": console, "tid": 0,
              "args": {"sort_index": index}})
        for line in _lines(folder / "console.jsonl"):
            emit({"name": str(line.get("text", ""))[:80], "cat": "console",
                  "ph": "i", "s": "t", "ts": line.get("host_ts", 0) / 1000,
                  "pid": console, "tid": 1,
                  "args": {"source": line.get("source"), "text": line.get("text"),
                           "guest_ts": line.get("ts")}})
        for item in _lines(folder / "snapshots.jsonl"):
            emit({"name": f"snapshot {item.get('name')}", "cat": "snapshot",
                  "ph": "i", "s": "p", "ts": item.get("host_ts", 0) / 1000,
                  "pid": console, "tid": 2, "args": item})
    stream.write('\n],\n"displayTimeUnit": "ns",\n"otherData": '
                 + json.dumps({"guests": guests}) + "}\n")
    return events
