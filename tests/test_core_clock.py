"""Entry timestamps are CLOCK_MONOTONIC nanoseconds (from the TSC).

tests/progs/core_clock.c brackets each RECORD with clock_gettime and
reports how far any entry's timestamp fell outside its bracket.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.core import run as run_program

# Also in the VM guest: the clock calibrates against the kernel and the
# (virtual) TSC.
pytestmark = pytest.mark.guest

# Converting rdtsc through a linear fit may land a few ns outside the
# bracket (measured here: at most ~35 ns); 1 us would mean a broken fit.
TOLERANCE_NS = 1000


def run(program: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, int]:
    result = run_program(program, *args, env=env)
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    return dict(zip(words[::2], map(int, words[1::2]), strict=True))


@pytest.mark.parametrize(
    ("env", "tsc"), [({}, 1), ({"RECORDER_NO_TSC": "1"}, 0)], ids=["tsc", "no-tsc"]
)
def test_timestamp_lies_between_clock_gettime_before_and_after(
    progs: Path, env: dict[str, str], tsc: int
) -> None:
    values = run(progs / "core_clock", "20011", env=env)
    error = max(values["max_early_ns"], values["max_late_ns"])
    print(
        f"max timestamp error {error} ns ({values['outside']} of "
        f"{values['samples']} outside their bracket; widest bracket "
        f"{values['max_window_ns']} ns)"
    )
    assert values["samples"] == 20011
    assert values["mismatched"] == 0
    if tsc and not Path(
        "/sys/devices/system/clocksource/clocksource0/current_clocksource"
    ).read_text().startswith("tsc"):
        pytest.skip("the kernel's clocksource is not the TSC")
    assert values["tsc"] == tsc
    assert error <= TOLERANCE_NS
    if not tsc:  # clock_gettime itself: never outside
        assert values["outside"] == 0


def test_record_fast_reuses_the_previous_timestamp(progs: Path) -> None:
    assert run(progs / "core_clock", "fast") == {
        "slow_flags": 0,
        "fast_flags": 1,
        "same_time": 1,
    }
