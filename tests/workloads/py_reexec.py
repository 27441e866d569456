"""A Python process that replaces itself by exec, keeping its PID.

Usage: py_reexec.py GENERATION. Prints "ready GENERATION PID", then for
each stdin line: "record N" records N times into run-time topic `work`
("gen %d record %d"), "exec" execs this script with GENERATION + 1 (same
PID, stdin and stdout), "exit" ends. Prints "done" after each "record".
"""

import os
import sys

import recorder


def main() -> None:
    generation = int(sys.argv[1])
    work = recorder.Recorder("work", 64, "Work of one generation")
    print(f"ready {generation} {os.getpid()}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if words[0] == "record":
            for index in range(int(words[1])):
                work.record("gen %d record %d", generation, index)
            print("done", flush=True)
        elif words[0] == "exec":
            os.execv(sys.executable, [sys.executable, __file__, str(generation + 1)])
        else:
            break


if __name__ == "__main__":
    main()
