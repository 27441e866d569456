"""A crash capture whose END never comes is still written, marked
incomplete, after a bounded wait (postmortem/captures.py).

The capture ring is made one page (4096 bytes), and the watcher reads
nothing while two victims die: the first one's capture (FAULT 72 bytes
with its header, entries 176, END 48) fits; the second's FAULT and 21 of
its entries fill the ring to 32 bytes short of its END, which the kernel
refuses (`messages_lost`), as when many processes die at once. Before,
that capture waited for its END for ever: no file, and the process, its
open memory descriptor and its entries were never let go.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.tracer import Victim
from timing import scaled

from recorder_tracer.postmortem.captures import END_WAIT_S
from recorder_tracer.postmortem.snapshot import SnapshotOptions, SnapshotWatcher
from recorder_tracer.postmortem.snapshot_file import read_snapshot

pytestmark = pytest.mark.bpf
N = 256


@pytest.fixture
def small_ring(tmp_path: Path) -> Iterator[tuple[SnapshotWatcher, list[str]]]:
    reports: list[str] = []
    watcher = SnapshotWatcher(SnapshotOptions(str(tmp_path / "snaps"), records=N,
                                              ring_pages=1), reports.append)
    watcher.start()
    yield watcher, reports
    watcher.close()


def wait_known(watcher: SnapshotWatcher, pid: int) -> None:
    deadline = time.monotonic() + scaled(10)
    while pid not in watcher.known:
        assert time.monotonic() < deadline, f"{pid} never registered"
        watcher.poll(timeout_ms=20)


def dead_victim(progs: Path, watcher: SnapshotWatcher) -> Victim:
    """A first victim with 2 records, then one with 10,000, both known to
    the watcher, both dead by SIGSEGV; the watcher read nothing meanwhile.
    Returns the second, whose END the kernel refused."""
    first = subprocess.Popen([str(progs / "snapshot_victim"), "victim", "2"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    first_pid = int(first.stdout.readline().split()[1])
    victim = Victim(progs)
    wait_known(watcher, first_pid)
    wait_known(watcher, victim.pid)
    watcher.poll(timeout_ms=0)          # an empty ring from here on
    first.stdin.write("go\n")
    first.stdin.flush()
    assert first.stdout.readline().strip() == "recorded"
    victim.record()
    lost_before = watcher.counters()["messages_lost"]
    first.stdin.write("segv\n")
    first.stdin.flush()
    assert first.wait(timeout=scaled(10)) == -signal.SIGSEGV
    victim.send("segv")
    assert victim.process.wait(timeout=scaled(10)) == -signal.SIGSEGV
    # The walk ran in the dying thread: its END was refused by now.
    assert watcher.counters()["messages_lost"] == lost_before + 1
    return victim


def test_a_capture_without_end_is_written_incomplete(
        progs: Path, small_ring: tuple[SnapshotWatcher, list[str]]) -> None:
    watcher, reports = small_ring
    victim = dead_victim(progs, watcher)
    watcher.bpf.ring_buffer_poll(0)     # the FAULT and what fit: read
    started = time.monotonic()
    snapshot = None
    while snapshot is None:
        assert time.monotonic() - started < scaled(END_WAIT_S + 10), "no file"
        for path in watcher.poll(timeout_ms=50):
            if f".{victim.pid}." in path.name:
                snapshot = read_snapshot(path)
    assert time.monotonic() - started >= END_WAIT_S * 0.9  # it waited for END
    assert snapshot["capture"]["end_lost"] is True
    assert 0 < len(snapshot["records"]) < N
    assert snapshot["capture"]["copied"] == len(snapshot["records"])
    messages = [record["message"] for record in snapshot["records"]]
    assert all(message.startswith("victim ") for message in messages)
    assert snapshot["signal"] == signal.SIGSEGV
    # (>=: the watcher sees the whole machine, other crashes too)
    assert watcher.counts.incomplete >= 1
    assert any(f"capture of pid {victim.pid} never ended" in line
               for line in reports)
    # Let go of: nothing of the victim pending or known once its exit came.
    deadline = time.monotonic() + scaled(10)
    while victim.pid in watcher.known:
        assert time.monotonic() < deadline, "the dead victim is still known"
        watcher.poll(timeout_ms=20)
    assert victim.pid not in watcher._captures


def test_closing_writes_a_capture_still_waiting_for_its_end(
        progs: Path, tmp_path: Path) -> None:
    watcher = SnapshotWatcher(SnapshotOptions(str(tmp_path / "snaps"), records=N,
                                              ring_pages=1))
    watcher.start()
    try:
        victim = dead_victim(progs, watcher)
        watcher.bpf.ring_buffer_poll(0)     # the FAULT and what fit: read
        assert victim.pid in watcher._captures
    finally:
        watcher.close()
    files = list((tmp_path / "snaps").glob(f"*.{victim.pid}.*.snapshot.json"))
    assert len(files) == 1
    assert read_snapshot(files[0])["capture"]["end_lost"] is True
