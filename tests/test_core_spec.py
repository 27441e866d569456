"""Trace specs (recorder_trace_set, RECORDER_TRACES), tweaks, live printing.

tests/progs/core_spec.c applies each argument with recorder_trace_set and
prints "status N" for each, then every topic's trace value and tweak's value.
"""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest
from helpers.core import run

DEFAULTS = {
    "net_send": 0,
    "net_recv": 0,
    "disk_io": 0,
    "Mixed_Case": 0,
    "traced": 0,
    "retries": 7,
    "budget": 23,
}


def outcome(
    result: subprocess.CompletedProcess[str],
) -> tuple[list[int], dict[str, int]]:
    """The statuses of recorder_trace_set, and the final values."""
    assert result.returncode == 0, result.stderr
    statuses: list[int] = []
    values: dict[str, int] = {}
    for line in result.stdout.splitlines():
        name, value = line.split()
        if name == "status":
            statuses.append(int(value))
        else:
            values[name] = int(value)
    return statuses, values


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr lines from the core itself (not dumped records)."""
    return [line for line in result.stderr.splitlines() if line.startswith("recorder:")]


@pytest.mark.parametrize(
    ("spec", "changed"),
    [
        ("net_send", {"net_send": 1}),
        ("net_.*", {"net_send": 1, "net_recv": 1}),
        ("NET_SEND", {"net_send": 1}),
        ("mixed_case=23", {"Mixed_Case": 23}),
        ("net_send=-5", {"net_send": -5}),
        ("net_send=0x17", {"net_send": 23}),
        ("-net_send", {"net_send": 0}),
        ("/net_send", {"net_send": -1}),
        ("net_send=3:disk_io=4", {"net_send": 3, "disk_io": 4}),
        ("net_send=3 disk_io=4", {"net_send": 3, "disk_io": 4}),
        ("net_send|disk_io=11", {"net_send": 11, "disk_io": 11}),
        (
            "all",
            {k: 1 for k in ("net_send", "net_recv", "disk_io", "Mixed_Case", "traced")},
        ),
        (
            "all:-net_send:/disk_io",
            {"net_recv": 1, "Mixed_Case": 1, "traced": 1, "net_send": 0, "disk_io": -1},
        ),
    ],
)
def test_trace_set_applies_spec(
    progs: Path, spec: str, changed: dict[str, int]
) -> None:
    statuses, values = outcome(run(progs / "core_spec", spec))
    assert statuses == [0]
    assert values == DEFAULTS | changed


def test_trace_set_later_items_override_earlier(progs: Path) -> None:
    statuses, values = outcome(run(progs / "core_spec", "net_send=7", "-net_send"))
    assert statuses == [0, 0]
    assert values == DEFAULTS


def test_regex_must_match_the_whole_name(progs: Path) -> None:
    result = run(progs / "core_spec", "net", "send")
    statuses, values = outcome(result)
    assert statuses == [0, 0]
    assert values == DEFAULTS
    assert errors(result) == [
        "recorder: trace spec item 'net' matches no topic or tweak (yet)",
        "recorder: trace spec item 'send' matches no topic or tweak (yet)",
    ]


def test_bad_regex_is_reported_and_the_rest_applies(progs: Path) -> None:
    result = run(progs / "core_spec", "net_send=3:disk_(:net_recv=4", "budget=5")
    statuses, values = outcome(result)
    assert statuses == [-1, 0]
    assert values == DEFAULTS | {"net_send": 3, "net_recv": 4, "budget": 5}
    assert errors(result) == [
        "recorder: invalid topic pattern 'disk_(' in trace spec: Unmatched ( or \\("
    ]


# Names ("abc", "x,y") are not bad values: they name channels (the seed's
# value export, tests/test_core_seed_api.py).
@pytest.mark.parametrize("value", ["a-b", "12x", "", "99999999999999999999", "x,"])
def test_bad_value_is_reported_and_changes_nothing(progs: Path, value: str) -> None:
    result = run(progs / "core_spec", f"net_send={value}")
    statuses, values = outcome(result)
    assert statuses == [-2]
    assert values == DEFAULTS
    assert errors(result) == [
        f"recorder: invalid value '{value}' for 'net_send' in trace spec "
        "(expected an integer)"
    ]


def test_recorder_traces_applies_before_main(progs: Path) -> None:
    result = run(
        progs / "core_spec", env={"RECORDER_TRACES": "net_.*=5:/disk_io traced=0"}
    )
    statuses, values = outcome(result)
    assert statuses == []
    assert values == DEFAULTS | {"net_send": 5, "net_recv": 5, "disk_io": -1}
    assert errors(result) == []


def test_recorder_traces_bad_item_is_reported_and_program_runs(progs: Path) -> None:
    result = run(
        progs / "core_spec", env={"RECORDER_TRACES": "disk_(:net_send=2x:net_recv"}
    )
    _, values = outcome(result)
    assert values == DEFAULTS | {"net_recv": 1}
    assert errors(result) == [
        "recorder: invalid topic pattern 'disk_(' in trace spec: Unmatched ( or \\(",
        "recorder: invalid value '2x' for 'net_send' in trace spec "
        "(expected an integer)",
    ]


def test_recorder_traces_item_matching_nothing_is_reported(progs: Path) -> None:
    result = run(progs / "core_spec", env={"RECORDER_TRACES": "nosuch:net_send"})
    _, values = outcome(result)
    assert values == DEFAULTS | {"net_send": 1}
    assert errors(result) == [
        "recorder: RECORDER_TRACES/RECORDER_TWEAKS item 'nosuch' matched no "
        "topic or tweak"
    ]


def test_recorder_tweaks_sets_tweaks_before_main(progs: Path) -> None:
    result = run(progs / "core_spec", env={"RECORDER_TWEAKS": "retries=13:budget=0x10"})
    _, values = outcome(result)
    assert values == DEFAULTS | {"retries": 13, "budget": 16}
    assert errors(result) == []


def test_trace_set_sets_tweaks(progs: Path) -> None:
    statuses, values = outcome(run(progs / "core_spec", "retries=-29", "BUDGET=0"))
    assert statuses == [0, 0]
    assert values == DEFAULTS | {"retries": -29, "budget": 0}


def test_all_does_not_touch_tweaks(progs: Path) -> None:
    _, values = outcome(run(progs / "core_spec", "all=41"))
    assert values["retries"] == 7
    assert values["budget"] == 23
    assert values["net_send"] == 41


def test_list_prints_topics_and_tweaks(progs: Path) -> None:
    result = run(progs / "core_spec", "list")
    statuses, _ = outcome(result)
    assert statuses == [0]
    lines = [" ".join(line.split()) for line in result.stderr.splitlines()]
    assert "net_send 0 16 Packets sent" in lines
    assert "retries 7 How often to retry" in lines


DUMP_LINE = re.compile(r"^\S+: \[\d+\.\d{9} (\d+)\] (\w+): (.*)$")


def test_traced_topic_prints_at_once_even_when_killed(progs: Path) -> None:
    result = run(progs / "core_spec", "--kill", "23", env={"RECORDER_TRACES": "traced"})
    assert result.returncode == -signal.SIGKILL
    printed = [DUMP_LINE.match(line) for line in result.stderr.splitlines()]
    assert [(m[2], m[3]) for m in printed if m] == [
        ("traced", f"traced record {i} of 23") for i in range(23)
    ]


def test_untraced_topic_prints_nothing(progs: Path) -> None:
    result = run(progs / "core_spec", "--kill", "23")
    assert result.returncode == -signal.SIGKILL
    assert result.stderr == ""


def test_negative_trace_value_stops_printing(progs: Path) -> None:
    result = run(
        progs / "core_spec", "--kill", "23", env={"RECORDER_TRACES": "traced /traced"}
    )
    assert result.returncode == -signal.SIGKILL
    assert result.stderr == ""


def test_recorder_traces_list_shows_the_program_topics_at_exit(progs: Path) -> None:
    result = run(progs / "core_spec", env={"RECORDER_TRACES": "list"})
    _, values = outcome(result)
    assert values == DEFAULTS
    lines = [" ".join(line.split()) for line in result.stderr.splitlines()]
    assert "traced 0 32 Printed at once when traced" in lines
    assert "budget 23 Bytes per round" in lines
