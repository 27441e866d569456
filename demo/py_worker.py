"""The Python half of `make demo`: a worker recording into run-time topics.

Usage: py_worker.py [SECONDS]. Waits for a line on stdin (the tracer is
armed by then), then handles fake jobs for SECONDS (default 1.5) and exits.
"""

import sys
import time

import recorder

jobs = recorder.Recorder("py_job", 64, "Jobs the Python worker ran")
chatter = recorder.Recorder("py_chatter", 32, "Internals (not traced by the demo)")


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.5
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    job = 0
    while time.monotonic() - start < seconds:
        chatter.record("picking job %d", job)
        took = 0.5 + (job % 4) * 0.25
        jobs.record("job %d done in %.2f ms by %s", job, took, "worker-1")
        job += 1
        time.sleep(0.01)


if __name__ == "__main__":
    main()
