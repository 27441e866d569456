"""`recorder daemon --forward` to a real `recorder collect`: real BPF on real
traced programs (tests/progs), over loopback TCP and a Unix socket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.channel import (
    TICKS,
    CollectorProcess,
    DaemonProcess,
    latest_sample,
    read_lines,
    reap_all,
    records_of,
    stream_dirs,
)
from helpers.prometheus import free_port
from helpers.tracer import (
    RECORDS,
    Victim,
    Workload,
    uprobe_multi_links_here,
    wait_for,
)
from timing import scaled

# The channel itself is userspace: the VM guest runs its vsock test
# (test_channel_vm.py), and the daemon's kernel side in test_daemon.py.
pytestmark = pytest.mark.host


@pytest.fixture(autouse=True)
def _reap_processes() -> Iterator[None]:
    """No collector or daemon of a failed test outlives it."""
    yield
    reap_all()



@pytest.mark.bpf
def test_daemon_forwards_records_metrics_snapshot_and_console_on_host_time(
        progs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    collector = CollectorProcess(out, [f"unix:{tmp_path}/collect.sock"])
    log = tmp_path / "agent.log"
    log.write_text("")
    fifo = tmp_path / "agent.fifo"
    os.mkfifo(fifo)
    marker = f"recorder-channel-test {uuid.uuid4().hex}"
    workload, victim = Workload(progs), Victim(progs)
    daemon = DaemonProcess(
        "-p", str(workload.pid), "-p", str(victim.pid), "--pin-dir", "",
        "--snapshot-dir", str(tmp_path / "snapshots"), "--snapshot-records", "23",
        "--forward", f"unix:{tmp_path}/collect.sock", "--trace", "tick",
        "--console", str(log), "--console", str(fifo), "--console", "kmsg",
        "--forward-interval", "0.2", "tick", "victim")
    try:
        collector.wait_line("connected from")
        workload.record("tick", TICKS)
        with open(log, "a") as file:
            file.write("agent: started\n")
        with open(fifo, "w") as file:
            file.write("fifo: hello\n")
        with open("/dev/kmsg", "w") as kmsg:
            kmsg.write(marker + "\n")
        victim.record()
        victim.send("segv")
        assert victim.process.wait(timeout=scaled(10)) == -signal.SIGSEGV
        wait_for(lambda: len(records_of(out)) >= TICKS, scaled(30))
        folder = stream_dirs(out)[0]
        # (any process with a core that crashes is captured: pick ours)
        ours = wait_for(lambda: [item for item in read_lines(
            folder / "snapshots.jsonl") if f".{victim.pid}." in item["name"]],
            scaled(30))
        texts = lambda: {line["text"] for line in read_lines(  # noqa: E731
            folder / "console.jsonl")}
        wait_for(lambda: {"agent: started", "fifo: hello", marker} <= texts(),
                 scaled(30))
        metric = (f'recorder_records_total{{comm="workload_ticks",'
                  f'pid="{workload.pid}",topic="tick"}}')
        wait_for(lambda: latest_sample(folder, metric) == TICKS, scaled(30))
    finally:
        if victim.process.poll() is None:
            victim.process.kill()
        assert daemon.stop() == 0, "\n".join(daemon.seen)
        workload.close()
        assert collector.stop() == 0
    records = records_of(out)
    assert [r["message"] for r in records] == [
        f"tick {i} of tick-string half {i * 0.5:.1f}" for i in range(TICKS)]
    assert records[3]["args"] == [3, "tick-string", 1.5]
    guest = json.loads((folder / "guest.json").read_text())
    assert guest["hostname"] == socket.gethostname()
    bound = guest["clock"]["uncertainty_ns"]
    assert all(abs(r["host_ts"] - r["ts"]) <= bound for r in records), bound
    snapshot = json.loads((folder / ours[-1]["file"]).read_text())
    assert snapshot["pid"] == victim.pid
    assert [r["message"] for r in snapshot["records"]] == [
        f"victim {i}" for i in range(RECORDS - 23, RECORDS)]
    assert all("host_ts" in line for line in read_lines(folder / "console.jsonl"))


@pytest.mark.bpf
def test_collector_killed_9_mid_run_every_traced_record_arrives_once(
        progs: Path, tmp_path: Path) -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    collector = CollectorProcess(out, [url])
    workload = Workload(progs)
    daemon = DaemonProcess("-p", str(workload.pid), "--pin-dir", "",
                           "--no-snapshots", "--forward", url, "--trace", "tick",
                           "tick")
    # Bursts the stream ring holds even where the tracer drains slowly (the
    # VM guest under TCG): a burst lost there is not what this tests.
    burst, rounds = 500, 6
    try:
        collector.wait_line("connected from")
        for round_ in range(rounds):
            workload.record("tick", burst)
            if round_ == 2:         # records in flight, not all acknowledged
                collector.kill()
            if round_ == 3:         # the daemon kept round 3 in its backlog
                collector = CollectorProcess(out, [url])
        wait_for(lambda: len(records_of(out)) >= burst * rounds, scaled(60))
    finally:
        assert daemon.stop() == 0, "\n".join(daemon.seen)
        workload.close()
        assert collector.stop() == 0
    records = records_of(out)
    assert len(records) == burst * rounds
    assert len({r["ts"] for r in records}) == burst * rounds
    assert [r["args"][0] for r in records] == list(range(burst)) * rounds
    assert read_lines(stream_dirs(out)[0] / "gaps.jsonl") == []


@pytest.mark.bpf
def test_guest_daemon_killed_9_its_pins_count_and_the_next_one_reports(
        progs: Path, tmp_path: Path) -> None:
    """kill -9 of the guest's daemon: what it had sent is written; the
    records made while no daemon ran are not traced, but the pinned
    metrics count them, the pinned snapshot program catches a crash, and
    the next daemon (a new stream) reports both."""
    if not uprobe_multi_links_here():
        # Pinned links need them: this kernel lacks them (checked), and
        # test_pins.py's perf-events case checks what pinning does here.
        return
    out = tmp_path / "out"
    url = f"unix:{tmp_path}/collect.sock"
    collector = CollectorProcess(out, [url])
    workload, victim = Workload(progs), Victim(progs)
    pin_dir = f"/sys/fs/bpf/recorder-test-channel-{os.getpid()}"
    argv = ["-p", str(workload.pid), "--pin-dir", pin_dir,
            "--snapshot-dir", str(tmp_path / "snapshots"), "--snapshot-records",
            "23", "--forward", url, "--trace", "tick", "--forward-interval", "0.2",
            "tick"]
    metric = f'recorder_records_total{{pid="{workload.pid}",topic="tick"}}'
    first = DaemonProcess(*argv, "-p", str(victim.pid))
    second = None
    try:
        workload.record("tick", TICKS)
        wait_for(lambda: len(records_of(out)) == TICKS, scaled(30))
        first_stream = stream_dirs(out)[0]
        wait_for(lambda: latest_sample(first_stream, metric) == TICKS, scaled(30))
        first.process.kill()
        first.process.wait(timeout=scaled(10))
        workload.record("tick", 29)             # no daemon runs
        victim.record()
        victim.send("segv")                     # nor when this one dies
        assert victim.process.wait(timeout=scaled(10)) == -signal.SIGSEGV
        second = DaemonProcess(*argv)
        wait_for(lambda: len(stream_dirs(out)) == 2, scaled(30))
        second_stream = next(f for f in stream_dirs(out) if f != first_stream)
        wait_for(lambda: latest_sample(second_stream, metric) == TICKS + 29,
                 scaled(30))
        # (Any process with a core that crashes is captured: pick ours.)
        ours = wait_for(lambda: [item for item in read_lines(
            second_stream / "snapshots.jsonl")
            if f".{victim.pid}." in item["name"]], scaled(30))
    finally:
        if victim.process.poll() is None:
            victim.process.kill()
        for daemon in (first, second):
            if daemon is not None:
                daemon.stop()
        workload.close()
        assert collector.stop() == 0
        shutil.rmtree(pin_dir, ignore_errors=True)
    assert second_stream.parent == first_stream.parent  # one guest, a new stream
    assert len(records_of(out)) == TICKS
    snapshot = json.loads((second_stream / ours[-1]["file"]).read_text())
    assert snapshot["pid"] == victim.pid
    assert snapshot["records"][-1]["message"] == f"victim {RECORDS - 1}"


@pytest.mark.bpf
def test_guest_daemon_killed_9_with_unsent_records_is_counted_lost(
        progs: Path, tmp_path: Path) -> None:
    """Records framed but never sent die with a daemon killed -9; its last
    word (the state it keeps under /run/recorder) lets the next daemon tell
    the collector, which names the lost items in that stream's gaps.jsonl."""
    from recorder_tracer.channel.guest.sources import state_path
    out = tmp_path / "out"
    url = f"tcp://127.0.0.1:{free_port()}"
    collector = CollectorProcess(out, [url])
    workload = Workload(progs)
    argv = ["-p", str(workload.pid), "--pin-dir", "", "--no-snapshots",
            "--forward", url, "--trace", "tick", "--forward-interval", "0.2", "tick"]
    state = state_path(url, "")
    first = DaemonProcess(*argv)
    second = None
    try:
        collector.wait_line("connected from")
        collector.kill()                        # the host is away
        workload.record("tick", TICKS)          # framed, kept, never sent

        def produced() -> int | None:
            try:
                return json.loads(state.read_text())["produced"].get("records")
            except (OSError, ValueError):
                return None

        wait_for(lambda: produced() == TICKS, scaled(30))
        first.process.kill()
        first.process.wait(timeout=scaled(10))
        collector.stop()
        collector = CollectorProcess(out, [url])
        second = DaemonProcess(*argv)
        try:
            wait_for(lambda: len(stream_dirs(out)) == 2, scaled(30))
        except AssertionError:
            raise AssertionError(f"no second stream: {stream_dirs(out)}; collector "
                                 f"said {collector.said()}; daemon said "
                                 f"{second.said()}") from None
        line = collector.wait_line("ended before sending them")
    finally:
        for daemon in (first, second):
            if daemon is not None:
                daemon.stop()
        workload.close()
        collector.stop()
        state.unlink(missing_ok=True)
    assert collector.process.returncode == 0
    lost = [gap for folder in stream_dirs(out)
            for gap in read_lines(folder / "gaps.jsonl")]
    assert len(lost) == 1, line
    assert lost[0]["guest_produced"]["records"] == TICKS
    assert lost[0]["frames"] >= 1
    assert records_of(out) == []
