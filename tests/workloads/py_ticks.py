"""A Python process whose run-time topic records a test controls.

Prints "ready <pid>", then for every line "TOPIC N" on stdin records N
times into run-time topic TOPIC ("value %d of %s half %.1f", i, TOPIC,
i / 2) and prints "done"; "exit" or end of input ends it.
"""

import os
import sys

import recorder


def main() -> None:
    print(f"ready {os.getpid()}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "exit":
            break
        topic = recorder.Recorder(words[0], 64, "A test topic")
        for index in range(int(words[1])):
            topic.record("value %d of %s half %.1f", index, words[0], index / 2)
        print("done", flush=True)


if __name__ == "__main__":
    main()
