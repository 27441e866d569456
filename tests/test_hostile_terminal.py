"""Names a process chose, printed on root's terminal: escaped, one line.

nobody runs a recorder program whose file (hence its comm, its exe path,
its share file's name) holds an escape sequence, a carriage return and a
newline. Root lists and shows what the tracer learnt of it: snapshots,
share files, probes, metrics. No control character may reach the
terminal raw, and no name may forge an output line.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers.tracer import Workload, wait_for
from hostile_helpers import AS_NOBODY, as_nobody, public_dir
from timing import scaled

from recorder_tracer.cli.app import main
from recorder_tracer.kernel.harvest import SiteStats
from recorder_tracer.metrics.aggregates import TopicMetrics
from recorder_tracer.metrics.table import console, metrics_table

pytestmark = pytest.mark.host
RECORDER = [sys.executable, "-m", "recorder_tracer.cli"]

# Clear the screen, red, back to column 0, then a forged line; the comm
# keeps the first 15 bytes.
NAME = "\x1b[2J\x1b[31m\r\nforged\x07"
FOLDER = "\x1b]0;owned\x07\u202erid\u2028dir"   # and a bidi override
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f"     # newlines end lines
                 "\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@dataclass
class Named:
    workload: Workload
    shares: Path


@pytest.fixture
def named(progs: Path) -> Iterator[Named]:
    with public_dir() as root:
        folder = root / "nobody" / FOLDER
        shares = root / "nobody" / "shares"
        for made in (as_nobody("mkdir", str(folder), str(shares)),
                     as_nobody("cp", str(progs / "workload_ticks"),
                               str(folder / NAME))):
            assert made.returncode == 0, made.stderr
        workload = Workload(progs, command=[
            *AS_NOBODY, "env", f"RECORDER_SHARE={shares}", str(folder / NAME)])
        try:
            workload.record("tick", 3)
            yield Named(workload, shares)
        finally:
            workload.close()


def run(*arguments: str) -> tuple[int, str]:
    # color: as on a terminal (click strips ANSI sequences only off one).
    result = CliRunner().invoke(main, list(arguments), color=True)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def assert_safe(output: str, lines: int | None = None) -> None:
    assert not RAW.search(output), repr(output)
    if lines is not None:
        assert len(output.splitlines()) == lines, output


def test_snapshot_listing_and_header_escape_the_process_names(
        named: Named, tmp_path: Path) -> None:
    pid = named.workload.pid
    status, written = run("snapshot", str(pid), "--snapshot-dir", str(tmp_path))
    assert status == 0, written
    status, listed = run("snapshots", "--snapshot-dir", str(tmp_path))
    assert status == 0
    assert_safe(listed, lines=2)
    assert "\\x1b[2J" in listed
    status, shown = run("show", written.strip())
    assert status == 0
    assert_safe(shown)
    header = shown.splitlines()[0]
    assert header.startswith(f"pid {pid} (\\x1b[2J\\x1b[31m")
    assert "\\x1b]0;owned\\x07\\u202erid\\u2028dir/" in header


def test_share_file_listing_escapes_the_name_in_the_file_name(
        named: Named) -> None:
    status, listed = run("dump", "--shm", "--share-dir", str(named.shares))
    assert status == 0
    assert_safe(listed, lines=1)
    assert f".{named.workload.pid}.recorder" in listed


def test_probe_listing_escapes_the_file_name(named: Named) -> None:
    status, listed = run("probes", str(named.workload.pid))
    assert status == 0, listed
    assert_safe(listed)
    assert "recorder:tick" in listed


def test_an_error_naming_a_file_is_one_escaped_line(tmp_path: Path) -> None:
    corrupt = tmp_path / f"{NAME}.1.000000000000001.snapshot.json"
    corrupt.write_text("{}")
    status, output = run("show", str(corrupt))
    assert status == 1
    assert_safe(output, lines=1)
    assert output.startswith("recorder: ")


def test_metrics_table_shows_markup_and_controls_in_names_as_text() -> None:
    """rich reads "[/x]" as a closing tag and raises: a comm or a run-time
    topic may be named so."""
    row = TopicMetrics(topic="[/x]\x1b[2J", pid=os.getpid(), comm="[bold]\r[/]",
                       stats=SiteStats(count=1))
    stream = io.StringIO()
    console(stream).print(metrics_table([row]))
    text = stream.getvalue()
    assert_safe(text)
    assert "[/x]\\x1b[2J" in text and "[bold]\\x0d[/]" in text


# What JSON leaves raw with ensure_ascii=False but a terminal acts on: a
# C1 CSI, a right-to-left override, a line separator, an isolate (14
# bytes of UTF-8: the whole comm).
JSON_NAME = "\u009b2J\u202e\u2028\u2066x"
JSON_RAW = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                      "\u202a-\u202e\u2066-\u2069]")


@pytest.mark.bpf
def test_json_lines_and_snapshots_escape_what_json_leaves_raw(
        progs: Path, tmp_path: Path) -> None:
    with public_dir() as root:
        program = root / "nobody" / JSON_NAME
        copied = as_nobody("cp", str(progs / "workload_ticks"), str(program))
        assert copied.returncode == 0, copied.stderr
        workload = Workload(progs, command=[*AS_NOBODY, str(program)])
        try:
            trace = subprocess.Popen(
                [*RECORDER, "trace", "-p", str(workload.pid), "--json", "tick"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert trace.stderr is not None
            wait_for(lambda: b"Tracing" in trace.stderr.readline())
            workload.record("tick", 3)
            status, written = run("snapshot", str(workload.pid),
                                  "--snapshot-dir", str(tmp_path))
            assert status == 0, written
            trace.send_signal(signal.SIGINT)
            output, errors = trace.communicate(timeout=scaled(30))
        finally:
            workload.close()
    assert trace.returncode == 0, errors
    snapshot = Path(written.strip()).read_bytes()
    for data in (output, snapshot):
        text = data.decode()            # still UTF-8
        assert not JSON_RAW.search(text), repr(text)
        assert "\\u009b2J\\u202e\\u2028\\u2066x" in text
    records = [json.loads(line) for line in output.decode().splitlines()]
    ticks = [r for r in records if r["type"] == "record"]
    assert [r["comm"] for r in ticks] == [JSON_NAME] * 3
    assert json.loads(snapshot)["comm"] == JSON_NAME
