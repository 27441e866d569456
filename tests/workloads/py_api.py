"""A Python process exercising the recorder API, for tests that read its
rings from outside (RECORDER_SHARE, /proc/PID/mem, BPF).

Usage: py_api.py SCENARIO. Prints "ready PID" once SCENARIO is recorded,
then for each stdin line "again" records SCENARIO once more and prints
"done"; end of input exits. Scenarios:
  values  one record in topic `values` of every kind of argument (VALUES)
  spans   a 50 ms `span`, a traced function, three traced coroutines under
          asyncio, one span that raises
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import recorder

# (format, arguments): every conversion family, values at their limits.
VALUES = [
    ("ints %lld %lld %llu %d %d", (-(2**63), 2**63 - 1, 2**64 - 1, True, 0)),
    ("floats %g %g %g %g", (0.1, -1e308, 5e-324, float("inf"))),
    ("float from int %f", (7,)),
    ("text %s %s %s %s", ("héllo ☃ 𝄞", b"raw \xc3\xa9 bytes", None, False)),
    ("pointer %p %p", (None, 0xDEADBEEF)),
]


def record_values() -> None:
    values = recorder.Recorder("values", 64, "values of every kind")
    for format, arguments in VALUES:
        values.record(format, *arguments)


@recorder.traced(name="traced_call")
def traced_call() -> None:
    time.sleep(0.01)


@recorder.traced(name="traced_task")
async def traced_task(delay: float) -> float:
    await asyncio.sleep(delay)
    return delay


async def tasks() -> None:
    await asyncio.gather(*(traced_task(0.02 * (i + 1)) for i in range(3)))


def record_spans() -> None:
    with recorder.span("slow"):
        time.sleep(0.05)
    traced_call()
    asyncio.run(tasks())
    try:
        with recorder.span("failing"):
            raise KeyError("x")
    except KeyError:
        pass


SCENARIOS = {"values": record_values, "spans": record_spans}


def main() -> None:
    scenario = SCENARIOS[sys.argv[1]]
    scenario()
    print(f"ready {os.getpid()}", flush=True)
    for _line in sys.stdin:
        scenario()
        print("done", flush=True)


if __name__ == "__main__":
    main()
