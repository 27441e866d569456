"""Programs written only against the seed library's documented API.

tests/progs/seed_api.c and seed_ring.c use the names of c3d/recorder's
recorder.h, recorder_ring.h and man3 pages (record_fast, recorder_tick,
RECORDER_HZ, recorder_configure_*, recorder_sort, recorder_dump_on_signal,
the tweak and version macros, the ring API): they compile unchanged against
our header, and their output is checked exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers.core import run
from timing import scaled

DUMP_LINE = re.compile(r"^(\S+): \[(\d+\.\d{9}) (\d+)\] (\w+): (.*)$")


def dump_lines(text: str, topic: str) -> list[tuple[str, str, str, str]]:
    """(where, timestamp, tid, message) of the dump lines of `topic`."""
    lines = []
    for line in text.splitlines():
        match = DUMP_LINE.match(line)
        if match and match[4] == topic:
            lines.append((match[1], match[2], match[3], match[5]))
    return lines


def seed_api(progs: Path, mode: str, env: dict[str, str] | None = None):
    result = run(progs / "seed_api", mode, env=env)
    assert result.returncode == 0, result.stderr
    return result


def test_float_hex_star_widths_and_custom_conversion_format_as_in_the_seed(
    progs: Path,
) -> None:
    result = seed_api(progs, "format")
    x1, x2 = re.fullmatch(r"x1=(\S+) x2=(\S+)\n", result.stdout).groups()
    messages = [line[3] for line in dump_lines(result.stderr, "Special")]
    assert messages == [
        "Float    X 3.1415 = c0000000",
        "Double   X 3.1415 = c083126f",
        "Double  LX 3.1415 = 400921cac083126f",
        "Float      3.1415 = 3.141500",
        "Format '     abc' 'def     ' '    1.23' '2.35    '",
        "Format '     abc' '    1.23'",
        # A dump must not follow pointers: the custom function sees trace 0.
        f"Struct dump example({x1}) then example({x2})",
        # '+' says the pointer is safe: trace is nonzero even in a dump.
        "Safe struct example(1, 2, 3)",
    ]


def test_traced_custom_conversion_sees_the_topic_trace_value(progs: Path) -> None:
    result = seed_api(progs, "format", env={"RECORDER_TRACES": "Special"})
    messages = [line[3] for line in dump_lines(result.stderr, "Special")]
    traced, dumped = messages[:8], messages[8:]
    assert traced[6] == "Struct dump example(1, 2, 3) then example(42, -42, 1764)"
    assert dumped[6].startswith("Struct dump example(0x")


def test_sort_formats_and_shows_through_the_callers_functions(progs: Path) -> None:
    result = seed_api(progs, "sort")
    out = result.stdout.splitlines()
    # The order field is the seed's global order (test_recorder_order_...):
    # it grows with each record, across topics.
    orders = [int(line.split("|")[2]) for line in out[1:7]]
    assert orders == sorted(set(orders))
    assert [re.sub(r"\|\d+\|", "|N|", line) for line in out[:7]] == [
        "sorted 6 shown 6",
        "alpha|located|N|timed|alpha 0",
        "beta|located|N|timed|beta 0",
        "alpha|located|N|timed|alpha 1",
        "beta|located|N|timed|beta 1",
        "alpha|located|N|timed|alpha 2",
        "beta|located|N|timed|beta 2",
    ]
    assert out[7] == "previous output NULL"
    # Output configured: the default line, on the FILE given.
    on_stdout = dump_lines("\n".join(out[8:11]), "beta")
    assert [line[3] for line in on_stdout] == ["beta 0", "beta 1", "beta 2"]
    # A show of our own sees the default line, then our format's line.
    shown = out[11:17]
    assert [DUMP_LINE.match(line[5:])[5] for line in shown[:3]] == [
        "alpha 0", "alpha 1", "alpha 2",
    ]
    assert all(line.startswith("SHOW ") for line in shown)
    assert shown[3:] == [
        f"SHOW alpha|located|{orders[2 * i]}|timed|alpha {i}" for i in (0, 1, 2)
    ]
    assert out[17:] == ["defaults returned yes"]
    # Back to the defaults: the same lines as before, on stderr.
    assert dump_lines(result.stderr, "beta") == on_stdout


def test_tweak_defined_in_code_is_set_from_recorder_tweaks(progs: Path) -> None:
    assert seed_api(progs, "tweak").stdout == "tweak 3\n"
    result = seed_api(progs, "tweak", env={"RECORDER_TWEAKS": "loop_count=23"})
    assert result.stdout == "tweak 23\n"
    messages = [line[3] for line in dump_lines(result.stderr, "loops")]
    assert messages == [f"loop {i} of 23" for i in range(23)]


def test_record_fast_reuses_the_previous_timestamp(progs: Path) -> None:
    result = seed_api(progs, "fast")
    lines = dump_lines(result.stderr, "MOVE")
    messages = [line[3] for line in lines]
    assert messages == ["slow 0", "fast 1", "fast 2", "fast 3", "FAST 4"]
    assert len({line[1] for line in lines}) == 1


def test_recorder_tick_measures_time_in_recorder_hz(progs: Path) -> None:
    out = dict(line.split() for line in seed_api(progs, "tick").stdout.splitlines())
    assert out["hz"] == "1000000000"
    assert 23000 <= float(out["elapsed_us"]) < 23000 + scaled(500000)


def test_dump_on_signal_dumps_and_the_program_goes_on(progs: Path) -> None:
    result = seed_api(progs, "signal")
    assert result.stdout == "alive after SIGUSR1\n"
    messages = [line[3] for line in dump_lines(result.stderr, "Special")]
    assert messages == ["before the signal 23"]
    assert "received signal 10 (USR1), dumping" in result.stderr


def test_background_dump_prints_each_new_record_once_in_order(progs: Path) -> None:
    result = seed_api(progs, "background",
                      env={"RECORDER_TWEAKS": "recorder_dump_sleep=1"})
    assert result.stdout == "stopped\n"
    messages = [line[3] for line in dump_lines(result.stderr, "bg")]
    assert messages == [f"bg {i}" for i in range(23)]


def test_timing_block_records_rates_totals_and_durations(progs: Path) -> None:
    result = seed_api(progs, "timing")
    pattern = re.compile(r"moved ([\d.]+) units/s, total (\d+), ([\d.]+) loops/s, "
                         r"avg duration ([\d.]+) us")
    found = [pattern.fullmatch(line[3]) for line in dump_lines(result.stderr, "timing")]
    assert found and all(found), result.stderr
    totals = [int(match[2]) for match in found if match]
    # 23 loops of 2 units, >= 1 ms each (>= 23 ms), a record per 5 ms at most.
    assert totals == sorted(totals) and all(t % 2 == 0 and t <= 46 for t in totals)
    assert len(totals) >= 2
    for match in found:
        assert match and float(match[3]) > 0
        assert float(match[4]) >= 1000            # each loop sleeps 1 ms
        assert float(match[1]) == pytest.approx(2 * float(match[3]), rel=1e-3)


def test_version_macros_name_the_seed_api_level(progs: Path) -> None:
    assert seed_api(progs, "version").stdout == "version 1.0.8\nat least 1.0.5: yes\n"


def test_channel_names_in_recorder_traces_record_without_printing(
    progs: Path, tmp_path: Path,
) -> None:
    result = seed_api(progs, "tweak", env={"RECORDER_TRACES": "loops=x_value,y_value",
                                           "RECORDER_SHARE": str(tmp_path)})
    assert "invalid" not in result.stderr
    # Record only (trace 0): the dump shows them once, nothing traced.
    messages = [line[3] for line in dump_lines(result.stderr, "loops")]
    assert messages == [f"loop {i} of 3" for i in range(3)]


def test_bad_channel_names_are_an_invalid_value(progs: Path) -> None:
    result = seed_api(progs, "tweak", env={"RECORDER_TRACES": "loops=x,2y"})
    assert "invalid value 'x,2y' for 'loops'" in result.stderr


def test_named_ring_writes_reads_peeks_and_catches_up_after_overflow(
    progs: Path,
) -> None:
    result = run(progs / "seed_ring", "basic")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "wrote 5",
        "readable 5 writable 11",
        "peek h",
        "read 3 'hel'",
        "wrote 20",
        "readable 16 writable 0",
        # 20 written into 16 slots over 2 unread: the last 16 survive.
        "read 16 'efghijklmnopqrst'",
        "overflow 6 reader 25 writer 25 commit 25",
        "peek NULL",
    ]


def test_typed_ring_block_functions_decide_partial_reads_and_writes(
    progs: Path,
) -> None:
    result = run(progs / "seed_ring", "typed")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "wrote 5 at 0",
        "read 5: 2 3 5 7 11 refusals 1 private reader 5 ring reader 0",
        "writable 5",
        "wrote 5 with a refusing write_block, refusals 2",
        "readable 8",
    ]


def test_recorder_order_counts_records_across_topics_as_the_seed(
    progs: Path,
) -> None:
    # Three records into each of two topics, interleaved: recorder_order
    # grew by 6, and the format function got each record's place in that
    # count (the sort shows the topics merged in time order).
    result = run(progs / "seed_api", "order")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "recorded 6",
        "beta 0", "alpha 1", "beta 2", "alpha 3", "beta 4", "alpha 5",
        "fetched the count, then 1 more",
    ]


def test_seed_recorder_entry_has_the_seed_fields_in_a_ring_of_them(
    progs: Path,
) -> None:
    # Our rings hold struct recorder_record; the seed's recorder_entry
    # (format, order, timestamp, where, args[4]) stays the seed's own.
    result = run(progs / "seed_ring", "entries")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "entry size 64 read 3",
        "order 100 value 0, 1, 2, 3 at tests/progs/seed_ring.c, stamped as written",
        "order 101 value 10, 11, 12, 13 at tests/progs/seed_ring.c, stamped as written",
        "order 102 value 20, 21, 22, 23 at tests/progs/seed_ring.c, stamped as written",
    ]


def test_concurrent_ring_writers_never_garble_messages(progs: Path) -> None:
    result = run(progs / "seed_ring", "threads", "4", "23000", timeout=scaled(120))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "read all written enough garbled 0 overflow 0\n"
