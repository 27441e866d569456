"""The host's half of the guest-to-host channel test (`make vm-test`).

Marked `vm_host`: conftest skips it unless RECORDER_VM_CHANNEL_OUT names the
--out directory of the `recorder collect` that vm-test ran on the host
while the guest ran test_channel_vm.py::test_daemon_forwards_to_the_host_
collector. It checks that the host got the guest's records, metrics, crash
snapshot and console line, all on host-aligned times.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers.channel import read_lines, stream_dirs

TICKS = 23


@pytest.mark.vm_host
def test_host_collector_got_the_guests_records_metrics_snapshot_and_console(
        ) -> None:
    out = Path(os.environ["RECORDER_VM_CHANNEL_OUT"])
    folders = [folder for folder in stream_dirs(out)
               if read_lines(folder / "snapshots.jsonl")]
    assert folders, f"no guest stream with a snapshot under {out}"
    folder = folders[-1]
    guest = json.loads((folder / "guest.json").read_text())
    records = read_lines(folder / "records.jsonl")
    assert [r["args"][0] for r in records if r["topic"] == "tick"] == list(
        range(TICKS))
    assert all(isinstance(r["host_ts"], int) for r in records)
    assert any(key.startswith("recorder_records_total{")
               for line in read_lines(folder / "metrics.jsonl")
               for key in line["samples"])
    console = [line["text"] for line in read_lines(folder / "console.jsonl")]
    assert f"recorder-vm-channel {guest['boot_id']}" in console
    snapshot = json.loads((folder / read_lines(folder / "snapshots.jsonl")[-1]
                           ["file"]).read_text())
    assert snapshot["signal_name"] == "SIGSEGV"
    clock = guest["clock"]
    print(f"guest {guest['hostname']}: clock offset {clock['offset_ns']} ns "
          f"+- {clock['uncertainty_ns']} ns, drift {clock['drift_ppm']} ppm")
    assert clock["points"] >= 1
