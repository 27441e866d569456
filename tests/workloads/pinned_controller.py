"""A controller to kill -9: arms PID's topics SPEC with pins in PIN_DIR.

Usage: pinned_controller.py PIN_DIR PID SPEC. Prints "armed" once its links
are pinned, then polls until it is killed (tests/test_pins.py).
"""

from __future__ import annotations

import sys

from recorder_tracer.session import TraceOptions, TraceSession
from recorder_tracer.spec import TopicSpec


def main(pin_dir: str, pid: str, spec: str) -> None:
    session = TraceSession(TraceOptions(pids=[int(pid)], spec=TopicSpec.parse(spec),
                                        pin_dir=pin_dir), lambda record: None)
    session.start()
    print("armed", flush=True)
    while session.poll(timeout_ms=50):
        pass


if __name__ == "__main__":
    main(*sys.argv[1:4])
