"""The channel over AF_VSOCK, inside the test VM only (`make vm-test`).

Marked `vm`: conftest skips these unless RECORDER_IN_VM=1, which only the
VM's test run sets, so no vsock socket is ever opened on a development
machine. In the VM a missing /dev/vsock or vsock_loopback is a failure, not
a skip: the guest kernel's vsock_loopback (CID 1) carries the channel from
the guest's daemon to a collector in the same guest.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
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
from helpers.tracer import RECORDS, Victim, Workload, wait_for
from timing import scaled

VMADDR_CID_LOCAL = 1


@pytest.fixture(autouse=True)
def _reap_processes() -> Iterator[None]:
    """No collector or daemon of a failed test outlives it."""
    yield
    reap_all()



def vsock_port() -> int:
    """A port no other test of this run uses (vsock has no port 0 here)."""
    return 20000 + os.getpid() % 20000


@pytest.mark.vm
@pytest.mark.bpf
def test_daemon_forwards_over_vsock_loopback(progs: Path, tmp_path: Path) -> None:
    assert Path("/dev/vsock").exists(), "no /dev/vsock: modprobe vsock_loopback"
    probe = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    probe.close()
    port = vsock_port()
    out = tmp_path / "out"
    collector = CollectorProcess(out, [f"vsock://any:{port}"])
    workload, victim = Workload(progs), Victim(progs)
    marker = f"recorder-vsock-test {uuid.uuid4().hex}"
    daemon = DaemonProcess(
        "-p", str(workload.pid), "-p", str(victim.pid), "--pin-dir", "",
        "--snapshot-dir", str(tmp_path / "snapshots"), "--snapshot-records", "23",
        "--forward", f"vsock://{VMADDR_CID_LOCAL}:{port}", "--trace", "tick",
        "--console", "kmsg", "--forward-interval", "0.2", "tick", "victim")
    try:
        collector.wait_line("connected from")
        workload.record("tick", TICKS)
        with open("/dev/kmsg", "w") as kmsg:
            kmsg.write(marker + "\n")
        victim.record()
        victim.send("segv")
        assert victim.process.wait(timeout=scaled(10)) == -signal.SIGSEGV
        wait_for(lambda: len(records_of(out)) >= TICKS, scaled(60))
        folder = stream_dirs(out)[0]
        # (any process with a core that crashes is captured: pick ours)
        ours = wait_for(lambda: [item for item in read_lines(
            folder / "snapshots.jsonl") if f".{victim.pid}." in item["name"]],
            scaled(60))
        wait_for(lambda: marker in {line["text"] for line in read_lines(
            folder / "console.jsonl")}, scaled(60))
        metric = f'recorder_records_total{{pid="{workload.pid}",topic="tick"}}'
        wait_for(lambda: latest_sample(folder, metric) == TICKS, scaled(60))
    finally:
        if victim.process.poll() is None:
            victim.process.kill()
        assert daemon.stop() == 0, "\n".join(daemon.seen)
        workload.close()
        assert collector.stop() == 0
    records = records_of(out)
    assert [r["args"][0] for r in records] == list(range(TICKS))
    guest = json.loads((folder / "guest.json").read_text())
    bound = guest["clock"]["uncertainty_ns"]
    assert all(abs(r["host_ts"] - r["ts"]) <= bound for r in records), bound
    snapshot = json.loads((folder / ours[-1]["file"]).read_text())
    assert [r["message"] for r in snapshot["records"]][-1] == f"victim {RECORDS - 1}"


@pytest.mark.vm
@pytest.mark.vm_host    # with test_channel_vm_host.py, which vm-test runs here after
@pytest.mark.bpf
def test_daemon_forwards_to_the_host_collector(progs: Path, tmp_path: Path) -> None:
    """The guest's half of the guest-to-host test: vm-test runs `recorder
    collect` on the host and says where it listens (RECORDER_VM_FORWARD_URL:
    the virtio-serial port, or tcp:// on the VM's private network); the
    host's half (test_channel_vm_host.py) then checks what arrived."""
    url = os.environ.get("RECORDER_VM_FORWARD_URL")
    assert url, "vm-test must set RECORDER_VM_FORWARD_URL (the host's collector)"
    workload, victim = Workload(progs), Victim(progs)
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    daemon = DaemonProcess(
        "-p", str(workload.pid), "-p", str(victim.pid), "--pin-dir", "",
        "--snapshot-dir", str(tmp_path / "snapshots"), "--snapshot-records", "23",
        "--forward", url, "--trace", "tick", "--console", "kmsg",
        "--forward-interval", "0.2", "tick", "victim")
    try:
        daemon.wait_line("forward: connected to ")
        workload.record("tick", TICKS)
        with open("/dev/kmsg", "w") as kmsg:
            kmsg.write(f"recorder-vm-channel {boot_id}\n")
        victim.record()
        victim.send("segv")
        assert victim.process.wait(timeout=scaled(10)) == -signal.SIGSEGV
        daemon.wait_line("snapshot written: ")
        threading.Event().wait(scaled(3))   # a few metrics intervals go out
    finally:
        if victim.process.poll() is None:
            victim.process.kill()
        assert daemon.stop() == 0, "\n".join(daemon.seen)
        workload.close()

