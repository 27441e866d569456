"""In-kernel metrics on real processes: exact counts, known histograms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.tracer import BackgroundSession, Workload, wait_for
from timing import scaled

from recorder_tracer.metrics.aggregates import MetricsReader, group, metrics_options
from recorder_tracer.metrics.table import bars

pytestmark = pytest.mark.bpf
RECORDER = [sys.executable, "-m", "recorder_tracer.cli"]


@pytest.fixture
def workloads(progs: Path):
    started: list[Workload] = []

    def start(program: str = "workload_ticks") -> Workload:
        started.append(Workload(progs, program))
        return started[-1]

    yield start
    for workload in started:
        workload.close()


def rows_by(session: BackgroundSession) -> dict[tuple[int | None, str], object]:
    """The session's metrics rows keyed by (pid, topic)."""
    return {(row.pid, row.topic): row
            for row in MetricsReader(session.session).read()}


def test_counts_equal_known_records_per_pid_and_summed(workloads) -> None:
    first, second = workloads(), workloads()
    session = BackgroundSession(metrics_options(pids=[first.pid, second.pid],
                                                specs=["tick:tock"]))
    try:
        first.record("tick", 23)
        first.record("tock", 7)
        second.record("tick", 29)
        second.record("flood", 5)          # not armed: never counted
        rows = MetricsReader(session.session).read()
    finally:
        session.stop()
    counts = {(row.pid, row.topic): row.stats.count for row in rows}
    assert counts == {(first.pid, "tick"): 23, (first.pid, "tock"): 7,
                      (second.pid, "tick"): 29}
    by_topic = {row.topic: row.stats.count for row in group(rows, "topic")}
    assert by_topic == {"tick": 52, "tock": 7}
    by_pid = {row.pid: row.stats.count for row in group(rows, "pid")}
    assert by_pid == {first.pid: 30, second.pid: 29}
    # Nothing is copied: no stream and no flight ring in metrics-only mode.
    assert session.session.stream is None


def test_value_histogram_buckets_hold_known_values(workloads) -> None:
    workload = workloads()
    session = BackgroundSession(metrics_options(pids=[workload.pid], specs=["tick"]))
    try:
        workload.record("tick", 23)     # args[0] = 0 .. 22
        rows = rows_by(session)
    finally:
        session.stop()
    stats = rows[(workload.pid, "tick")].stats
    assert (stats.count, stats.valued, stats.sum, stats.min, stats.max) == \
        (23, 23, 253, 0, 22)
    # log2 buckets: {0}, [1,2), [2,4), [4,8), [8,16), [16,32)
    assert stats.values[:7] == [1, 1, 2, 4, 8, 7, 0]
    assert sum(stats.values) == 23
    assert bars(stats.values) == "0..32 ▁▁▂▄█▇"


@pytest.mark.parametrize(("choice", "expected"), [
    # (SPEC suffix, (sum, min, max, non-empty buckets)) for i in 0..22
    ("", (253, 0, 22, {0: 1, 1: 1, 2: 2, 3: 4, 4: 8, 5: 7})),
    ("@1", (23 * 1000 + 253, 1000, 1022, {10: 23})),       # 1000 + i
    ("@2", (-253, -22, 0, {0: 23})),                      # -i: bucket 0
    ("@3", (253 << 20, 0, 22 << 20, {0: 1, 21: 1, 22: 2, 23: 4, 24: 8, 25: 7})),
])
def test_spec_suffix_chooses_the_aggregated_argument(
        workloads, choice: str, expected: tuple) -> None:
    workload = workloads("metrics_values")
    session = BackgroundSession(metrics_options(pids=[workload.pid],
                                                specs=[f"measure{choice}"]))
    try:
        workload.send("values 23")
        rows = rows_by(session)
    finally:
        session.stop()
    stats = rows[(workload.pid, "measure")].stats
    buckets = {index: count for index, count in enumerate(stats.values) if count}
    assert (stats.sum, stats.min, stats.max, buckets) == expected
    assert stats.count == stats.valued == 23


def test_interval_histogram_matches_a_known_period(workloads) -> None:
    workload = workloads("metrics_values")
    session = BackgroundSession(metrics_options(pids=[workload.pid], specs=["beat"]))
    try:
        started = time.monotonic_ns()
        workload.send("periodic 23 3000")       # one record every 3 ms
        took = time.monotonic_ns() - started    # the 23 records lie within
        rows = rows_by(session)
    finally:
        session.stop()
    stats = rows[(workload.pid, "beat")].stats
    intervals = stats.intervals
    # 23 records, 22 intervals of 3 ms and a little more (sleep overshoot,
    # more on a busy machine): in [2^21, 2^22) ns = [2.1 ms, 4.2 ms), or
    # later buckets (how many depends on the machine's load: 11 of 22 were
    # past 4.2 ms beside a VM run), none below: a sleep never ends early.
    # A record that changed CPU starts that CPU's chain afresh (intervals
    # are per CPU), so allow a few less.
    assert 18 <= sum(intervals) <= 22
    assert sum(intervals[:22]) == 0
    assert intervals[22] >= 1
    # Their exact total (the Prometheus histogram's _sum): at least 3 ms
    # each, and no more than the time the workload took to make them, per
    # CPU's chain (a fixed 6 ms mean failed beside a VM run: 9.7 ms).
    cpus = os.cpu_count() or 1
    assert 3_000_000 * sum(intervals) <= stats.interval_sum <= took * cpus


def test_span_durations_are_aggregated_from_span_end_records(workloads) -> None:
    workload = workloads("metrics_values")
    session = BackgroundSession(metrics_options(pids=[workload.pid], specs=["work"]))
    try:
        wait_for(lambda: session.session.processes[workload.pid].runtime_armed)
        workload.send("spans 23")       # durations (i + 1) * 1000 ns
        rows = rows_by(session)
    finally:
        session.stop()
    stats = rows[(workload.pid, "work")].stats
    assert stats.spans
    assert (stats.count, stats.valued) == (46, 23)     # begin + end records
    assert (stats.sum, stats.min, stats.max) == (276 * 1000, 1000, 23000)
    # 1000, 2000, ... 23000 ns in [512, 1024), [1024, 2048), [2048, 4096)...
    assert {i: c for i, c in enumerate(stats.values) if c} == \
        {10: 1, 11: 1, 12: 2, 13: 4, 14: 8, 15: 7}


def test_process_started_later_is_counted_under_all(workloads) -> None:
    session = BackgroundSession(metrics_options(all_processes=True, specs=["tock"]))
    try:
        late = workloads()
        wait_for(lambda: "tock" in getattr(
            session.session.processes.get(late.pid), "armed_topics", ()))
        late.record("tock", 23)
        rows = rows_by(session)
    finally:
        session.stop()
    assert rows[(late.pid, "tock")].stats.count == 23


def test_metrics_command_prints_json_of_a_command(progs: Path) -> None:
    result = subprocess.run(
        [*RECORDER, "metrics", "-c", str(progs / "tracer_wait"), "--json",
         "wait_.*"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=scaled(60))
    assert result.returncode == 0, result.stderr
    rows = {row["topic"]: row for row in json.loads(result.stdout.splitlines()[-1])}
    assert rows["wait_loop"]["count"] == 23
    assert rows["wait_loop"]["value"]["sum"] == 253
    assert rows["wait_edge"]["count"] == 2


def test_metrics_table_shows_counts_and_bars(progs: Path) -> None:
    result = subprocess.run(
        [*RECORDER, "metrics", "-c", str(progs / "tracer_wait"), "--by", "topic",
         "wait_loop"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=scaled(60), env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "wait_loop" in line)
    assert " 23 " in line and "0..32 ▁▁▂▄█▇" in line


@pytest.mark.parametrize(("args", "message"), [
    (["-p", "1", "tick@7"], "argument index '7'"),
    (["-p", "1", "--csv", "x.csv"], "--csv and --png go with --series"),
])
def test_bad_metrics_input_is_one_line(args: list[str], message: str) -> None:
    result = subprocess.run([*RECORDER, "metrics", *args], capture_output=True,
                            text=True, timeout=scaled(30))
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_series_writes_each_value_in_time_order(progs: Path, tmp_path: Path) -> None:
    csv_path, png_path = tmp_path / "loop.csv", tmp_path / "loop.png"
    result = subprocess.run(
        [*RECORDER, "metrics", "-c", str(progs / "tracer_wait"), "--series",
         "wait_loop:0", "--csv", str(csv_path), "--png", str(png_path)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=scaled(60))
    assert result.returncode == 0, result.stderr
    rows = [line.split(",") for line in csv_path.read_text().splitlines()]
    assert rows[0] == ["time_s", "pid", "value"]
    assert [row[2] for row in rows[1:]] == [str(i) for i in range(23)]
    times = [float(row[0]) for row in rows[1:]]
    assert times == sorted(times) and times[0] == 0.0
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_probe_of_the_earlier_contract_is_counted_without_values(workloads) -> None:
    # Its registers hold no copies of the entry's words (one argument only):
    # the tracer gives it the count-only program, never garbage values.
    workload = workloads("metrics_legacy")
    session = BackgroundSession(metrics_options(pids=[workload.pid], specs=["legacy"]))
    try:
        workload.send("fire")
        rows = rows_by(session)
    finally:
        session.stop()
    stats = rows[(workload.pid, "legacy")].stats
    assert (stats.count, stats.valued, sum(stats.intervals)) == (23, 0, 0)
