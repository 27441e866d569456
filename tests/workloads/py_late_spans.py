"""Opens three spans and records three values once GO_FILE exists (the
trace started meanwhile): its topics are made while the trace runs. Then
it exits at once, or, with STOP_FILE, waits for that file first.

    python py_late_spans.py GO_FILE [STOP_FILE]

Prints "ready PID" once its recorder core is loaded.
"""

import os
import sys
import time

import recorder


def wait_for(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.01)


print("ready", os.getpid(), flush=True)
wait_for(sys.argv[1])
for index in range(3):
    with recorder.span("late_span"):
        recorder.record("late_value", "value %d of %s", index, f"late-{index}")
if len(sys.argv) > 2:
    wait_for(sys.argv[2])
