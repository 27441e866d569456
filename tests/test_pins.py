"""Tracer death: pinned links and flight ring outlive a SIGKILLed controller
(tracer/recorder_tracer/kernel/pins.py), and the next controller takes them over."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.tracer import (
    RECORDS,
    Victim,
    Workload,
    semaphore_value,
    uprobe_multi_links_here,
)
from timing import scaled

from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.errors import TracerError
from recorder_tracer.kernel.arm import NO_UPROBE_MULTI
from recorder_tracer.kernel.pins import PinDir
from recorder_tracer.postmortem.snapshot import SnapshotOptions, SnapshotWatcher
from recorder_tracer.postmortem.snapshot_file import read_snapshot
from recorder_tracer.session.loop import TraceOptions, TraceSession

CONTROLLER = Path(__file__).parent / "workloads" / "pinned_controller.py"


@pytest.fixture
def pin_dir() -> str:
    """A pin directory of this test's own (never the default one), removed
    whatever happens."""
    if not Path("/sys/fs/bpf").is_dir() or os.geteuid() != 0:
        pytest.skip("needs root and /sys/fs/bpf")
    path = f"/sys/fs/bpf/recorder-test-{os.getpid()}"
    yield path
    shutil.rmtree(path, ignore_errors=True)
    assert not Path(path).exists()


@pytest.mark.bpf
@pytest.mark.parametrize("forced", [False, True], ids=["kernel", "perf-events"])
def test_killed_controller_keeps_links_and_flight_ring_for_the_next(
        progs: Path, pin_dir: str, forced: bool, monkeypatch) -> None:
    """With uprobe_multi links (6.9+) the armed topics outlive a kill -9;
    with perf events (older kernels, or forced) they end with the
    controller, and the pinned flight ring keeps what came before."""
    if forced:
        monkeypatch.setenv(NO_UPROBE_MULTI, "1")  # the controller inherits it
    links = uprobe_multi_links_here() and not forced
    workload = Workload(progs)
    exe = str(progs / "workload_ticks")
    try:
        controller = subprocess.Popen(
            [sys.executable, str(CONTROLLER), pin_dir, str(workload.pid), "tick:tock"],
            stdout=subprocess.PIPE, text=True)
        assert controller.stdout is not None
        assert controller.stdout.readline().strip() == "armed"
        workload.record("tick", 23)
        controller.kill()
        assert controller.wait(timeout=scaled(10)) == -9
        pinned = PinDir(pin_dir).links()
        if links:
            # No controller: the pinned links keep the topics armed (one
            # count per site: tock's RECORD and its RECORDER_DEFINE site)...
            assert semaphore_value(workload.pid, exe, "tock") == 2
            assert {(link.pid, link.topic) for link in pinned} == {
                (workload.pid, "tick"), (workload.pid, "tock")}
        else:   # the perf events closed with the controller: disarmed
            assert semaphore_value(workload.pid, exe, "tock") == 0
            assert pinned == []
        workload.record("tock", 29)     # ...and BPF keeps these records
        reports: list[str] = []
        session = TraceSession(TraceOptions(pids=[workload.pid],
                                            spec=TopicSpec.parse("tick:tock"),
                                            pin_dir=pin_dir),
                               lambda record: None, reports.append)
        try:
            session.start()
            said_no_links = [line for line in reports
                             if line.startswith("pins: no uprobe_multi links")]
            assert len(said_no_links) == (0 if links else 1), reports
            flight = session.flight_records()
            assert [r.message for r in flight if r.topic == "tock"] == (
                [f"tock {i}" for i in range(29)] if links else [])
            assert len([r for r in flight if r.topic == "tick"]) == 23
            if links:
                assert any("took over from a previous controller" in line
                           for line in reports)
                # One link per site now: ours (the previous ones dropped).
            assert semaphore_value(workload.pid, exe, "tock") == 2
        finally:
            session.close()
        assert not Path(pin_dir).exists()       # a clean end leaves nothing
        assert semaphore_value(workload.pid, exe, "tock") == 0
    finally:
        workload.close()


def test_pin_dir_outside_bpffs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TracerError, match="is not a bpf filesystem"):
        PinDir(tmp_path / "recorder")


@pytest.mark.bpf
def test_crash_while_no_controller_runs_is_snapshotted_by_the_next(
        progs: Path, pin_dir: str, tmp_path: Path) -> None:
    """The capture program's links and maps are pinned: a victim dying
    between a controller's kill -9 and its restart leaves its snapshot,
    written (and formatted) by the restarted one."""
    directory = tmp_path / "snaps"
    victim = Victim(progs)
    controller = subprocess.Popen(
        [sys.executable, str(CONTROLLER), pin_dir, str(victim.pid), "victim",
         str(directory)], stdout=subprocess.PIPE, text=True)
    try:
        assert controller.stdout is not None
        assert controller.stdout.readline().strip() == "armed"
        controller.kill()
        assert controller.wait(timeout=scaled(10)) == -9
        victim.record()
        victim.send("segv")
        assert victim.process.wait(timeout=scaled(10)) == -signal.SIGSEGV
        assert not list(directory.glob("*.snapshot.json"))  # nobody wrote it
        watcher = SnapshotWatcher(SnapshotOptions(str(directory), records=23,
                                                  pin_dir=pin_dir))
        try:
            watcher.start()
            written = watcher.poll(timeout_ms=100)
        finally:
            watcher.close()
    finally:
        if victim.process.poll() is None:
            victim.process.kill()
        controller.kill()
        controller.wait()
    assert [path.name for path in written if f".{victim.pid}." in path.name]
    snapshot = read_snapshot(written[0])
    assert [record["message"] for record in snapshot["records"]][-23:] == [
        f"victim {i}" for i in range(RECORDS - 23, RECORDS)]
    assert snapshot["signal_name"] == "SIGSEGV"
    # The watcher's clean close removed its pins (the dead controller's
    # trace pins are the fixture's to remove).
    assert not (Path(pin_dir) / "snapshot").exists()
