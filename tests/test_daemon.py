"""recorder daemon: a real Prometheus server scrapes it on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.prometheus import fetch, free_port, prometheus_scraping, query, stop
from helpers.tracer import (
    RECORDS,
    Victim,
    Workload,
    semaphore_value,
    uprobe_multi_links_here,
    wait_for,
)
from timing import scaled

from recorder_tracer.errors import TracerError
from recorder_tracer.postmortem.snapshot_file import read_snapshot
from recorder_tracer.session.daemon import DaemonConfig

RECORDER = [sys.executable, "-m", "recorder_tracer.cli"]


@pytest.mark.bpf
def test_prometheus_scrapes_the_daemon_and_queries_totals(progs: Path,
                                                          tmp_path: Path) -> None:
    first, second = Workload(progs), Workload(progs)
    daemon_port = free_port()
    config = tmp_path / "daemon.toml"
    config.write_text(f'listen = "127.0.0.1:{daemon_port}"\n'
                      f'pid = [{first.pid}, {second.pid}]\nspec = ["tick", "tock"]\n')
    daemon = subprocess.Popen([*RECORDER, "daemon", "--config", str(config)],
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: fetch(f"http://127.0.0.1:{daemon_port}/metrics"), scaled(30))
        first.record("tick", 23)
        first.record("tock", 7)
        second.record("tick", 29)
        exposition = fetch(f"http://127.0.0.1:{daemon_port}/metrics") or ""
        assert (f'recorder_records_total{{comm="workload_ticks",pid="{first.pid}",'
                f'topic="tick"}} 23.0') in exposition
        assert "recorder_value_bucket" in exposition
        assert "recorder_tracer_lost_records_total 0.0" in exposition
        with prometheus_scraping(daemon_port, tmp_path) as prometheus_port:
            totals = wait_for(lambda: query(
                prometheus_port, "sum by (topic) (recorder_records_total)"),
                scaled(60))
            assert totals == {"tick": 52.0, "tock": 7.0}
            per_pid = query(prometheus_port,
                            f'recorder_records_total{{pid="{second.pid}"}}')
            assert per_pid == {"tick": 29.0}
            # args[0] of tick is 0..22 and 0..28: their sum, exactly.
            sums = query(prometheus_port, "sum by (topic) (recorder_value_sum)")
            assert sums == {"tick": 253.0 + 406.0, "tock": 21.0}
    finally:
        stop(daemon)
        first.close()
        second.close()
    assert daemon.returncode == 0, daemon.stderr.read() if daemon.stderr else ""


def test_config_file_rejects_unknown_keys_and_wrong_types(tmp_path: Path) -> None:
    config = tmp_path / "daemon.toml"
    config.write_text('listen = "127.0.0.1:1"\nall = true\ngrace = 2\n')
    assert DaemonConfig.load(config) == DaemonConfig(listen="127.0.0.1:1", all=True,
                                                     grace=2)
    config.write_text("lisen = 1\n")
    with pytest.raises(TracerError, match="unknown setting 'lisen'"):
        DaemonConfig.load(config)
    config.write_text('pid = ["x"]\n')
    with pytest.raises(TracerError, match="pid"):
        DaemonConfig.load(config)


def test_flags_override_the_config_file() -> None:
    config = DaemonConfig(listen="127.0.0.1:1", comm=["a"], grace=5.0)
    merged = config.merged(listen=None, comm=("b",), grace=None, all=False, pid=())
    assert merged == DaemonConfig(listen="127.0.0.1:1", comm=["b"], grace=5.0)


def test_daemon_without_processes_is_one_line_error() -> None:
    result = subprocess.run([*RECORDER, "daemon"], capture_output=True, text=True,
                            timeout=scaled(30))
    assert result.returncode == 1
    assert result.stderr.startswith("recorder: choose processes")
    assert "Traceback" not in result.stderr


@pytest.mark.bpf
def test_exited_process_is_dropped_after_the_grace_period(progs: Path) -> None:
    from recorder_tracer.session.daemon import Daemon
    workload = Workload(progs)
    daemon = Daemon(DaemonConfig(listen=f"127.0.0.1:{free_port()}",
                                 comm=["workload_ticks"], spec=["tick"],
                                 grace=scaled(1.0)))
    daemon.start()
    try:
        wait_for(lambda: "tick" in getattr(
            daemon.session.processes.get(workload.pid), "armed_topics", ()))
        workload.record("tick", 23)
        pid = workload.pid
        workload.close()
        wait_for(lambda: daemon.session.poll(timeout_ms=20) and
                 pid in daemon.session.exited)
        rows = {(row.pid, row.topic): row.stats.count
                for row in daemon.snapshot().rows}
        assert rows[(pid, "tick")] == 23        # still exported, in grace
        # (`in`: any workload_ticks of the machine is the daemon's too)
        assert pid not in daemon.expire()
        time.sleep(scaled(1.0) + 0.1)
        assert pid in daemon.expire()
        assert all(row.pid != pid for row in daemon.snapshot().rows)
    finally:
        daemon.close()


@pytest.mark.bpf
def test_label_sets_over_the_cap_are_dropped_busiest_kept(progs: Path) -> None:
    from recorder_tracer.session.daemon import Daemon
    workload = Workload(progs)
    daemon = Daemon(DaemonConfig(listen=f"127.0.0.1:{free_port()}", pid=[workload.pid],
                                 spec=["tick", "tock"], max_series=1))
    daemon.start()
    try:
        workload.record("tick", 23)
        workload.record("tock", 7)
        snapshot = daemon.snapshot()
    finally:
        daemon.close()
        workload.close()
    assert [(row.topic, row.stats.count) for row in snapshot.rows] == [("tick", 23)]
    assert (snapshot.dropped_series, snapshot.hits, snapshot.lost) == (1, 30, 0)


@pytest.mark.bpf
def test_daemon_killed_and_restarted_takes_over_links_and_counts(
        progs: Path) -> None:
    """kill -9 of the daemon: its pinned links keep the topic armed and its
    pinned metrics table keeps counting; the next daemon exports it all."""
    if not uprobe_multi_links_here():
        # Pinned links need them: this kernel lacks them (checked), and
        # test_pins.py's perf-events case checks what pinning does here.
        return
    workload = Workload(progs)
    port = free_port()
    pin_dir = f"/sys/fs/bpf/recorder-test-daemon-{os.getpid()}"
    argv = [*RECORDER, "daemon", "-p", str(workload.pid), "--listen",
            f"127.0.0.1:{port}", "--pin-dir", pin_dir, "--no-snapshots", "tick"]
    metric = (f'recorder_records_total{{comm="workload_ticks",pid="{workload.pid}",'
              'topic="tick"}')
    url = f"http://127.0.0.1:{port}/metrics"
    first = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    second = None
    try:
        wait_for(lambda: fetch(url), scaled(30))
        workload.record("tick", 23)
        assert f"{metric} 23.0" in (fetch(url) or "")
        first.kill()
        first.wait(timeout=scaled(10))
        assert any(Path(pin_dir).glob("link:*"))
        # Armed at both of tick's sites (its RECORD, its RECORDER_DEFINE).
        assert semaphore_value(workload.pid, str(progs / "workload_ticks"),
                               "tick") == 2
        workload.record("tick", 29)        # no daemon runs
        second = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: f"{metric} 52.0" in (fetch(url) or ""), scaled(30))
        workload.record("tick", 4)
        assert f"{metric} 56.0" in (fetch(url) or "")
    finally:
        for daemon in (first, second):
            if daemon is not None:
                stop(daemon)
        workload.close()
        shutil.rmtree(pin_dir, ignore_errors=True)
    assert second is not None and second.stderr is not None
    assert "took over" in second.stderr.read()


@pytest.mark.bpf
def test_second_daemon_on_the_same_pin_dir_is_refused(progs: Path) -> None:
    workload = Workload(progs)
    pin_dir = f"/sys/fs/bpf/recorder-test-lock-{os.getpid()}"
    argv = [*RECORDER, "daemon", "-p", str(workload.pid), "--pin-dir", pin_dir,
            "--no-snapshots", "tick"]
    port = free_port()
    first = subprocess.Popen([*argv, "--listen", f"127.0.0.1:{port}"],
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: fetch(f"http://127.0.0.1:{port}/metrics"), scaled(30))
        result = subprocess.run([*argv, "--listen", f"127.0.0.1:{free_port()}"],
                                capture_output=True, text=True, timeout=scaled(60))
        assert result.returncode == 1
        assert result.stderr.startswith(
            f"recorder: another daemon (pid {first.pid}) uses {pin_dir}")
        assert "Traceback" not in result.stderr
    finally:
        stop(first)
        workload.close()
        shutil.rmtree(pin_dir, ignore_errors=True)


@pytest.mark.bpf
def test_crash_while_the_daemon_is_dead_is_written_by_the_next_daemon(
        progs: Path, tmp_path: Path) -> None:
    """The daemon's snapshot program is pinned too: a process that dies
    between the daemon's kill -9 and its restart still leaves its last
    records, which the restarted daemon writes."""
    victim = Victim(progs)
    port = free_port()
    pin_dir = f"/sys/fs/bpf/recorder-test-crash-{os.getpid()}"
    directory = tmp_path / "snapshots"
    argv = [*RECORDER, "daemon", "--comm", "snapshot_victim", "--listen",
            f"127.0.0.1:{port}", "--pin-dir", pin_dir, "--snapshot-dir",
            str(directory), "--snapshot-records", "23", "victim"]
    url = f"http://127.0.0.1:{port}/metrics"
    first = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    second = None
    try:
        wait_for(lambda: fetch(url), scaled(30))
        first.kill()
        first.wait(timeout=scaled(10))
        victim.record()
        victim.send("segv")
        assert victim.process.wait(timeout=scaled(10)) == -signal.SIGSEGV
        assert not list(directory.glob("*.json"))      # nobody wrote it yet
        second = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        files = wait_for(
            lambda: list(directory.glob(f"*.{victim.pid}.*.snapshot.json")), scaled(30))
        wait_for(lambda: "recorder_snapshots_written_total 1.0"
                 in (fetch(url) or ""), scaled(30))
    finally:
        if victim.process.poll() is None:
            victim.process.kill()
        for daemon in (first, second):
            if daemon is not None:
                stop(daemon)
        shutil.rmtree(pin_dir, ignore_errors=True)
    snapshot = read_snapshot(files[0])
    assert [record["message"] for record in snapshot["records"]] == [
        f"victim {i}" for i in range(RECORDS - 23, RECORDS)]
    assert snapshot["signal_name"] == "SIGSEGV"
