"""Harvest records to Records: the recorder topics' side of decoding.

A harvest record (kernel/bpf/harvest.h) carries the entry BPF copied at
the hit, the strings it copied for %s arguments, and the probe address
that names a C topic. The entry itself is decoded by decode/entry.py, the
one entry decoder; here its process and topic are found.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from recorder_tracer.abi import HARVEST_ENTRY_UNREADABLE
from recorder_tracer.decode.entry import entry_record
from recorder_tracer.decode.record import Record
from recorder_tracer.session.armed import ArmedProcess
from recorder_tracer.target import procs
from recorder_tracer.target.memory import ProcessImage

if TYPE_CHECKING:
    from recorder_tracer.kernel.coverage import Copy
    from recorder_tracer.kernel.harvest import Harvester


def harvest_record(processes: dict[int, ArmedProcess],
                   exited: dict[int, ArmedProcess], cpu: int, raw: Any) -> Record:
    """A harvest record, with its format and location read from the
    process that wrote it (or its files, once it has exited)."""
    entry = raw.entry
    pid = raw.pid
    process = processes.get(pid) or exited.get(pid)
    earlier = exited.get(pid)
    if (earlier is not None and earlier.exec_ns is not None
            and raw.entry.timestamp < earlier.exec_ns):
        process = earlier       # written before its exec: the old program's
    if raw.status & HARVEST_ENTRY_UNREADABLE:
        # BPF could not copy the entry; say so, at the time of the hit.
        topic = (process.topic_at(raw.probe_address) if process else None) or "?"
        return Record(ts=raw.harvest_ns, pid=pid, tid=0,
                      comm=raw.comm.decode(errors="replace"), topic=topic,
                      where="?", message="<entry unreadable by BPF>", args=[],
                      cpu=cpu)
    if process is None:
        process = ArmedProcess(pid, raw.comm.decode(errors="replace"),
                               ProcessImage(pid), {}, [], set())
        exited[pid] = process
    strings = iter(raw.strings)

    def string(address: int) -> str | None:
        """The next string BPF captured, else read from the process."""
        captured = next(strings, None)
        if captured is None:
            return process.image.string(address, cached=False)
        if captured.length > 0:
            return bytes(captured.text)[: captured.length - 1].decode(
                "utf-8", "replace")
        return None     # unreadable: rendered as such

    return entry_record(entry, pid=pid, comm=raw.comm.decode(errors="replace"),
                        topic=_topic_name(process, raw),
                        text=process.image.string, string=string, cpu=cpu,
                        ns_pid=process.ns_pid)


def _topic_name(process: ArmedProcess, raw: Any) -> str:
    """A C topic is named by its probe; the registry names run-time ones."""
    name = process.topic_at(raw.probe_address)
    if name is not None:
        return name
    topic_id = raw.entry.topic_id
    topic = process.topics.get(topic_id)
    if (topic is None and topic_id not in process.unknown_topics
            and procs.process_exists(process.pid)):
        try:
            process.image = ProcessImage.of(process.pid)
            process.topics.update({t.id: t for t in process.image.topics()})
        except OSError:
            pass
        topic = process.topics.get(topic_id)
        if topic is None:
            process.unknown_topics.add(topic_id)
    return topic.name if topic else f"topic{topic_id}"


def flight_records(harvester: Harvester,
                   decode: Callable[[int, Any], Record]) -> list[Record]:
    """The records in the kernel flight ring (the last FLIGHT_ENTRIES per
    CPU of armed topics), in time order; with a pin directory, also
    those a previous controller's links kept while none ran."""
    seen = set()
    records = []
    for cpu, raw in harvester.flight_records():
        record = decode(cpu, raw)
        key = (record.pid, record.tid, record.ts, record.topic, record.message)
        if key not in seen:     # two programs in a takeover's overlap
            seen.add(key)
            records.append(record)
    return sorted(records, key=lambda record: record.ts)


# -- copies at exit and backfills (session/coverage.py) ----------------------

def copied_topic_names(copy: Copy, image: ProcessImage | None) -> dict[int, str]:
    """Topic id -> name of a copy. BPF reads each name in the ending
    process, where a fork that never touched a name's read-only page has it
    unmapped (fork copies no page table of a file mapping): such a name is
    read from the image (the parent's memory, or the executable's file)."""
    names = {}
    for topic_id, name in copy.topics.items():
        if not name and image is not None:
            name = image.string(copy.topic_names_at.get(topic_id, 0)) or ""
        names[topic_id] = name or f"topic{topic_id}"
    return names


def captured_strings(strings: list[tuple[int, bytes]], image: ProcessImage | None
                      ) -> Callable[[int], str | None]:
    """The `string(address)` of a copied entry: the strings BPF read, in
    order, then (for literals) the process's files."""
    captured = iter(strings)

    def string(address: int) -> str | None:
        length, text = next(captured, (0, b""))
        if length > 0:
            return bytes(text)[:length - 1].decode("utf-8", "replace")
        return image.string(address, cached=False) if image else None
    return string
