"""The harvest program and its stream, below TraceSession: per-CPU rings read
in bulk, batch and per-record delivery, exact accounting, site counts."""

from __future__ import annotations

import contextlib
import ctypes
import doctest
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.tracer import Workload

from recorder_tracer.kernel import arm, harvest
from recorder_tracer.kernel.harvest import Harvester
from recorder_tracer.kernel.stream import Stream
from recorder_tracer.target import notes

FLOOD = 100_003     # primes: a match is no accident
# Records that fit one CPU's ring of 1024 pages even if nothing reads it
# meanwhile (480-byte slots: 8,738; 9,001 lost the last 263 when the poll
# thread got no CPU while the workload recorded, beside a VM run).
FITS = 8_009


@pytest.fixture
def workload(progs: Path):
    started = Workload(progs)
    yield started
    started.close()


def arm_topic(harvester: Harvester, workload: Workload, progs: Path,
              topic: str) -> list[arm.Attachment]:
    path = str(progs / "workload_ticks")
    return [arm.attach_uprobe(harvester.program_fd_for(probe.name), path,
                              probe.file_offset, workload.pid, probe.semaphore_offset)
            for probe in notes.probes_in_file(path)
            if probe.provider == "recorder" and probe.name == topic]


@contextlib.contextmanager
def polling(stream: Stream) -> Iterator[None]:
    """Poll `stream` in a thread meanwhile; drain it at the end."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            stream.poll(timeout_ms=10)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        stream.drain()


def test_layout_helpers_follow_their_doctests() -> None:
    assert doctest.testmod(harvest).failed == 0


@pytest.mark.bpf
def test_batches_carry_every_record_with_its_fields(workload, progs) -> None:
    harvester = Harvester()
    batches = []
    stream = Stream(harvester, on_batch=lambda cpu, batch: batches.append(batch),
                    pages_per_cpu=1024)
    assert all(ring.size // ring.stride >= FITS for ring in stream._rings)
    attachments = arm_topic(harvester, workload, progs, "flood")
    with polling(stream):
        workload.record("flood", FITS)
    for attachment in attachments:
        arm.detach(attachment)

    fields = harvester.record_fields()
    pid, status, nargs, first = (fields.index(name) for name in
                                 ("pid", "status", "entry.nargs", "entry.args[0]"))
    values = [record for batch in batches for record in batch.tuples()]
    assert sorted(record[first] for record in values) == list(range(FITS))
    # Every entry is read, even one whose unused tail lies on a page the
    # process never touched (status 0, one argument).
    assert {(record[pid], record[status], record[nargs]) for record in values} == {
        (workload.pid, 0, 1)}
    summaries = stream.summary()
    assert all(cpu.balanced and cpu.lost == 0 for cpu in summaries)
    assert sum(cpu.received for cpu in summaries) == FITS
    stream.close()
    harvester.close()


@pytest.mark.bpf
def test_small_rings_lose_records_but_account_for_each(workload, progs) -> None:
    harvester = Harvester(flight=False)
    received: list[tuple[int, int]] = []
    stream = Stream(harvester,
                    lambda cpu, raw: received.append((cpu, raw.entry.args[0])),
                    pages_per_cpu=1)
    attachments = arm_topic(harvester, workload, progs, "flood")
    workload.record("flood", FLOOD)
    for attachment in attachments:
        arm.detach(attachment)
    stream.drain()
    summaries = stream.summary()
    assert sum(cpu.produced for cpu in summaries) == FLOOD
    assert sum(cpu.lost for cpu in summaries) > 0
    assert all(cpu.balanced for cpu in summaries)
    assert sum(cpu.received for cpu in summaries) == len(received)
    for cpu in {cpu for cpu, _ in received}:      # each CPU's ring is in order
        mine = [value for seen, value in received if seen == cpu]
        assert mine == sorted(mine)
    stream.close()
    harvester.close()


@pytest.mark.bpf
def test_records_left_by_a_raising_handler_come_at_the_next_poll(workload,
                                                                 progs) -> None:
    harvester = Harvester(flight=False)
    seen: list[int] = []

    def on_record(cpu: int, raw) -> None:
        seen.append(raw.entry.args[0])
        if len(seen) == 5:
            raise KeyboardInterrupt

    stream = Stream(harvester, on_record)
    attachments = arm_topic(harvester, workload, progs, "tock")
    workload.record("tock", 23)
    with pytest.raises(KeyboardInterrupt):
        stream.drain()
    stream.drain()
    for attachment in attachments:
        arm.detach(attachment)
    assert seen == list(range(23))
    assert sum(cpu.received for cpu in stream.summary()) == 23
    stream.close()
    harvester.close()


@pytest.mark.bpf
def test_metrics_count_each_site_without_a_stream(workload, progs) -> None:
    harvester = Harvester(stream=False, flight=False, metrics=True)
    attachments = arm_topic(harvester, workload, progs, "tick")
    workload.record("tick", 23)
    workload.record("tock", 7)
    for attachment in attachments:
        arm.detach(attachment)
    counts = harvester.site_counts()
    (key, count), = counts.items()
    assert (key.pid, key.topic_id, count) == (workload.pid, None, 23)
    counters = harvester.counters()
    assert sum(cpu.hits for cpu in counters) == 23
    assert sum(cpu.streamed + cpu.flight + cpu.stats_full for cpu in counters) == 0
    harvester.close()


@pytest.mark.bpf
def test_flight_ring_keeps_the_records_and_their_strings(workload, progs) -> None:
    harvester = Harvester(stream=False, flight=True, metrics=False)
    attachments = arm_topic(harvester, workload, progs, "tick")
    workload.record("tick", 23)
    for attachment in attachments:
        arm.detach(attachment)
    heads = list(harvester.bpf[b"flight_head"][ctypes.c_int(0)])
    cpu = heads.index(23)
    kept = [harvester.bpf[b"flight"][ctypes.c_int(slot)][cpu] for slot in range(23)]
    assert [record.entry.args[0] for record in kept] == list(range(23))
    assert {(record.strings[0].length, record.strings[0].text) for record in kept} == {
        (12, b"tick-string")}
    assert sum(c.flight for c in harvester.counters()) == 23
    harvester.close()
