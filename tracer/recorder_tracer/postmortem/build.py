"""Snapshot objects: what a capture or a request turns into a file.

`build_snapshot` makes the snapshot object of a process's last entries
(decoded by decode/entry.py, with the process's memory or files);
`take_snapshot(pid)` writes one for a live process, on demand, without a
signal. In pinned mode, what formats a process's records is remembered
beside the snapshots, for a controller that starts after this one died.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recorder_tracer.decode.entry import RawEntry, image_record
from recorder_tracer.errors import TracerError
from recorder_tracer.output.safe_write import private_dir, write_new_file
from recorder_tracer.postmortem.snapshot_file import (
    DEFAULT_DIRECTORY,
    SNAPSHOT_KIND,
    SNAPSHOT_VERSION,
    file_name,
    record_json,
    write_snapshot,
)
from recorder_tracer.target import procs
from recorder_tracer.target.memory import ProcessImage, parse_maps, read_maps
from recorder_tracer.target.rings import read_process_entries
from recorder_tracer.target.safe_open import read_untrusted

MAX_REMEMBERED_BYTES = 16 << 20     # one process's maps and topics


@dataclass
class SnapshotOptions:
    """Where snapshots go and how many records they keep."""

    directory: str = DEFAULT_DIRECTORY
    records: int = 256
    ring_pages: int = 2048      # the capture ring buffer, in pages
    # A bpffs directory (kernel/pins.py): the capture program's links and
    # maps outlive the controller, so a process that dies while none runs
    # is captured all the same; the next controller writes its file.
    pin_dir: str | None = None


@dataclass
class KnownProcess:
    """A process whose registry BPF knows, and how to read it later."""

    pid: int
    image: ProcessImage
    registry: int
    exe: str
    topics: dict[int, str]
    share_dir: str | None = None
    started: int | None = None  # procs.start_time: is the pid still it?


def remember(directory: Path, known: KnownProcess) -> None:
    """Keep what formats `known`'s records in `directory` (beside the
    snapshots), for a controller that starts after this one died."""
    try:
        with open(f"/proc/{known.pid}/maps", "rb") as maps:
            text = maps.read().decode("utf-8", "surrogateescape")
        os.close(private_dir(directory.parent))     # refused if not ours
        write_new_file(directory, f"{known.pid}.json", json.dumps({
            "pid": known.pid, "exe": known.exe, "registry": known.registry,
            "topics": known.topics, "share_dir": known.share_dir,
            "started": known.started, "maps": text},
            ensure_ascii=True).encode(), sync=False)
    except (OSError, TracerError):
        pass        # a snapshot of it would only lack formats

def load_remembered(directory: Path) -> dict[int, KnownProcess]:
    """What remember() kept, read once (the files are removed)."""
    remembered = {}
    for path in directory.glob("*.json"):
        try:
            value = json.loads(read_untrusted(path, MAX_REMEMBERED_BYTES))
            image = ProcessImage.offline(value["pid"], parse_maps(value["maps"]))
            remembered[value["pid"]] = KnownProcess(
                value["pid"], image, value["registry"], value["exe"],
                {int(k): v for k, v in value["topics"].items()},
                value["share_dir"], value.get("started"))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        path.unlink(missing_ok=True)
    return remembered


def build_snapshot(pid: int, comm: str, known: KnownProcess | None,
                   entries: list[RawEntry], *, source: str, records_wanted: int,
                   time_ns: int, fault: dict[str, Any] | None = None,
                   capture: dict[str, Any] | None = None) -> dict[str, Any]:
    """The snapshot object of `entries` (already the last N, in order)."""
    image = known.image if known is not None else ProcessImage(pid)
    topics = dict(known.topics) if known is not None else {}
    # Still readable: fresher names (a zombie has none: keep ours). Only
    # if the pid is still that process: after a controller restart it may
    # be another's by now, whose maps would give wrong names.
    same = (known is None or known.started is None
            or procs.start_time(pid) == known.started)
    with contextlib.suppress(OSError):
        mappings = read_maps(pid) if same else []
        if mappings:
            image.mappings = mappings
            topics.update({topic.id: topic.name for topic in image.topics()})
    records = [record_json(image_record(entry, image, pid=pid, comm=comm,
                                        topics=topics), entry.as_json())
               for entry in entries]
    wall_offset = time.time_ns() - time.monotonic_ns()
    snapshot: dict[str, Any] = {
        "kind": SNAPSHOT_KIND, "version": SNAPSHOT_VERSION, "source": source,
        "pid": pid, "comm": comm, "exe": known.exe if known else _exe(pid),
        "time_ns": time_ns,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S",
                              time.gmtime((time_ns + wall_offset) / 1e9)) + "Z",
        "signal": fault["signal"] if fault else None,
        "signal_name": fault["signal_name"] if fault else None,
        "signal_code": fault["code"] if fault else None,
        "fault_address": fault["address"] if fault else None,
        "fault": fault, "records_wanted": records_wanted,
        "records": records, "capture": capture or {}, "exit": None,
        "shm": None,
    }
    share_dir = known.share_dir if known else share_dir_of(pid)
    if share_dir:
        from recorder_tracer.target.shm import share_file_of, shm_snapshot
        path = share_file_of(share_dir, pid)
        if path is not None:
            snapshot["shm"] = shm_snapshot(path, records_wanted)
    return snapshot


def take_snapshot(pid: int, options: SnapshotOptions) -> Path:
    """Write a snapshot of live process `pid`, read through its memory
    (no signal, no BPF); returns the file."""
    try:
        image = ProcessImage.of(pid)
    except (FileNotFoundError, ProcessLookupError):
        raise TracerError(f"process {pid} does not exist") from None
    except OSError as error:
        raise TracerError(f"cannot read process {pid}: {error.strerror}") from None
    try:
        registry = image.find_registry()
        if registry is None:
            raise TracerError(f"process {pid} has no recorder core")
        comm = procs.process_comm(pid)
        known = KnownProcess(pid, image, registry, _exe(pid) or "?",
                             {t.id: t.name for t in image.topics()}, share_dir_of(pid))
        now = time.monotonic_ns()
        entries = read_process_entries(image, options.records)
        snapshot = build_snapshot(pid, comm, known, entries, source="request",
                                  records_wanted=options.records, time_ns=now)
        try:
            return write_snapshot(options.directory, file_name(pid, comm, now),
                                  snapshot)
        except OSError as error:
            raise TracerError(f"cannot write snapshot in {options.directory}: "
                              f"{error.strerror or error}") from None
    except procs.ProcessGone:
        raise TracerError(f"process {pid} exited") from None
    finally:
        image.close()


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def share_dir_of(pid: int) -> str | None:
    """RECORDER_SHARE of `pid`'s environment at its start, if set."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            for item in environ.read().split(b"\0"):
                if item.startswith(b"RECORDER_SHARE="):
                    return item.split(b"=", 1)[1].decode(errors="replace") or None
    except OSError:
        pass
    return None
