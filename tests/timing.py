"""Time bounds for tests: every bound scales with how fast this machine runs.

`make vm-test` runs the suite in an emulated guest several times slower than
this machine and says so through RECORDER_TEST_TIME_SCALE; a bound written as
`scaled(30)` is 30 s here and 120 s there. Tests wait on events (a line, a
file, a count) and use these bounds only as the point of giving up.
"""

from __future__ import annotations

import os

# How many times slower than native this machine runs: 1 here.
TIME_SCALE = float(os.environ.get("RECORDER_TEST_TIME_SCALE", "1"))


def scaled(seconds: float) -> float:
    """`seconds` on this machine, stretched by the suite's time scale.

    >>> scaled(10) == 10 * TIME_SCALE
    True
    """
    return seconds * TIME_SCALE
