"""The seed's recorder_trace_entry, called by a program written for the seed.

tests/progs/seed_trace.c builds c3d/recorder's recorder_entry itself and
calls recorder_trace_entry(recorder_info *, recorder_entry *) directly and
through a hook of that type, as programs written for the seed do; RECORD
uses a function of our own, so the seed's name keeps the seed's signature.
"""

from __future__ import annotations

import re
from pathlib import Path

from helpers.core import run

TRACE_LINE = re.compile(r"^seed_trace\.c:42: \[1\.234567890 (\d+)\] traced: "
                        r"value 23 name str ratio 0\.50$")


def test_hook_around_recorder_trace_entry_prints_the_entry_when_traced(
    progs: Path,
) -> None:
    result = run(progs / "seed_trace", "hook", env={"RECORDER_TRACES": "traced"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hook traced order 7\n"
    lines = [line for line in result.stderr.splitlines() if "traced:" in line]
    assert len(lines) == 1 and TRACE_LINE.match(lines[0]), result.stderr
    assert int(TRACE_LINE.match(lines[0])[1]) > 0       # the caller's thread


def test_untraced_topic_is_not_shown(progs: Path) -> None:
    result = run(progs / "seed_trace", "hook")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "off\n"
    assert "traced:" not in result.stderr


def test_topic_with_channels_only_exports_as_in_the_seed(progs: Path) -> None:
    result = run(progs / "seed_trace", "hook",
                 env={"RECORDER_TRACES": "traced=x,y,z"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hook traced order 7\n"
    assert "traced:" not in result.stderr


def test_configured_format_gets_the_seed_entrys_fields(progs: Path) -> None:
    result = run(progs / "seed_trace", "format")
    assert result.returncode == 0, result.stderr
    first, second, done = result.stdout.splitlines()
    # The "file:line:" head of the seed's format is the location; without
    # one, the entry's `where` (the seed puts the function there) is.
    assert first == "traced|seed_trace.c:42|7|1234567890|value 23 name str ratio 0.50"
    label, location, order, stamp, message = second.split("|")
    assert (label, location, order, message) == ("traced", "format_mode", "8",
                                                 "99% of beef")
    assert int(stamp) > 0
    assert done == "done"
