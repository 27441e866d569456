"""A controller to kill -9: arms PID's topics SPEC with pins in PIN_DIR.

Usage: pinned_controller.py PIN_DIR PID SPEC [SNAPSHOT_DIR]. Prints "armed"
once its links are pinned, then polls until it is killed (tests/test_pins.py).
With SNAPSHOT_DIR, it captures crash snapshots too, pinned as well.
"""

from __future__ import annotations

import sys

from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.postmortem.snapshot import SnapshotOptions
from recorder_tracer.session.loop import TraceOptions, TraceSession


def main(pin_dir: str, pid: str, spec: str, snapshot_dir: str | None = None) -> None:
    snapshots = SnapshotOptions(snapshot_dir) if snapshot_dir else None
    session = TraceSession(TraceOptions(pids=[int(pid)], spec=TopicSpec.parse(spec),
                                        pin_dir=pin_dir, snapshots=snapshots),
                           lambda record: None)
    session.start()
    print("armed", flush=True)
    while session.poll(timeout_ms=50):
        pass


if __name__ == "__main__":
    main(*sys.argv[1:5])
