"""The CLI's conventions: -h, --version, short options as bcc and perf
spell them, one line and a non-zero exit for non-root users and for a spec
that matched nothing, plain output without a terminal, shell completion."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.tracer import Workload
from timing import scaled

from recorder_tracer import __version__

RECORDER = [sys.executable, "-m", "recorder_tracer.cli"]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
COMMANDS = ["probes", "trace", "metrics", "top", "daemon", "snapshot", "snapshots",
            "show", "dump"]


def recorder(*args: str, user: list[str] | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(user or []), *RECORDER, *args], capture_output=True,
                          text=True, timeout=scaled(120), env=env, cwd="/")


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_dash_h_is_help_with_examples(command: str) -> None:
    result = recorder(*([command] if command else []), "-h")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ")
    assert "Examples:" in result.stdout
    assert recorder(*([command] if command else []), "--help").stdout == result.stdout


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_is_the_installed_distributions(flag: str) -> None:
    result = recorder(flag)
    assert result.returncode == 0
    assert result.stdout == f"recorder {__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)


def test_trace_path_leaves_distribution_metadata_to_version() -> None:
    # importlib.metadata pulls ~70 ms of imports (email, zipfile, csv) into
    # every start; only --version (and the daemon's exposition) reads it.
    probe = ("import sys, recorder_tracer.cli.app, recorder_tracer.session.loop, "
             "recorder_tracer.output.sinks, recorder_tracer.session.batch_topics; "
             "print('importlib.metadata' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True,
                            text=True, timeout=scaled(60), check=True)
    assert result.stdout == "False\n"


@pytest.mark.parametrize(("command", "short", "long"), [
    ("trace", "-d", "--duration"), ("metrics", "-d", "--duration"),
    ("metrics", "-i", "--interval"), ("top", "-i", "--interval"),
    ("trace", "-p", "--pid"), ("trace", "-c", "--command"), ("trace", "-o", "--output"),
])
def test_short_options_as_bcc_and_perf_spell_them(command: str, short: str,
                                                  long: str) -> None:
    assert re.search(rf"^\s+{short}, {long}\b", recorder(command, "-h").stdout,
                     re.MULTILINE)


@pytest.fixture(scope="module")
def as_nobody() -> list[str]:
    """The setpriv prefix that runs the CLI as user nobody, if it can."""
    if os.geteuid() != 0:
        pytest.skip("switching to nobody needs root")
    probe = subprocess.run([*NOBODY, sys.executable, "-c", "import recorder_tracer"],
                           capture_output=True, text=True, timeout=scaled(60))
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot run this venv's Python: {probe.stderr.strip()}")
    return NOBODY


@pytest.mark.parametrize(("args", "named"), [
    (["probes"], "probes"), (["probes", "1"], "probes PID"),
    (["trace", "-p", "1"], "trace"), (["trace", "--all", "--json"], "trace"),
    (["metrics", "-p", "1"], "metrics"), (["top", "--all"], "top"),
    (["daemon", "--all"], "daemon"), (["snapshot", "1"], "snapshot"),
])
def test_non_root_gets_one_line_and_status_1(as_nobody: list[str], args: list[str],
                                             named: str) -> None:
    result = recorder(*args, user=as_nobody)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (f"recorder: `recorder {named}` must run as root (BPF, "
                             "uprobes and other processes' memory need it): use sudo\n")


def test_non_root_reads_files_and_snapshots(as_nobody: list[str],
                                            tmp_path: Path) -> None:
    probes = recorder("probes", "--json", "/usr/bin/python3.11", user=as_nobody)
    assert probes.returncode == 0, probes.stderr
    unreadable = tmp_path / "snapshots"
    unreadable.mkdir(mode=0o700)
    denied = recorder("snapshots", "--snapshot-dir", str(unreadable), user=as_nobody)
    assert denied.returncode == 1
    assert denied.stderr == (f"recorder: {unreadable}: permission denied "
                             "(snapshots are root's: use sudo)\n")
    listed = recorder("snapshots", "--snapshot-dir", "/", user=as_nobody)
    assert listed.returncode == 0, listed.stderr


@pytest.mark.bpf
def test_spec_matching_nothing_fails_with_a_hint(progs: Path) -> None:
    workload = Workload(progs)
    try:
        wrong = recorder("trace", "-p", str(workload.pid), "-d", "0.5", "tick", "tcok")
        right = recorder("trace", "-p", str(workload.pid), "-d", "0.5", "tick")
        metrics = recorder("metrics", "-p", str(workload.pid), "-d", "0.5", "tcok")
    finally:
        workload.close()
    assert wrong.returncode == 1
    assert wrong.stderr.endswith(
        "recorder: spec 'tcok' matched no topic of the traced processes "
        "(`recorder probes PID` lists them)\n")
    assert right.returncode == 0, right.stderr
    assert metrics.returncode == 1
    assert "spec 'tcok' matched no topic" in metrics.stderr.splitlines()[-1]


def read_until(process: subprocess.Popen[str], pattern: str,
               lines: list[str]) -> None:
    """Append process's stdout lines to `lines` until one matches `pattern`;
    fail when it ends or takes longer than scaled(60)."""
    assert process.stdout is not None
    deadline = time.monotonic() + scaled(60)
    while not lines or not re.search(pattern, lines[-1]):
        left = deadline - time.monotonic()
        assert left > 0 and select.select([process.stdout], [], [], left)[0], \
            "no line matched: " + "".join(lines)
        line = process.stdout.readline()
        assert line, "it ended: " + "".join(lines)
        lines.append(line)


@pytest.mark.bpf
def test_top_without_a_terminal_prints_plain_tables(progs: Path) -> None:
    workload = Workload(progs)
    top = subprocess.Popen([*RECORDER, "top", "-p", str(workload.pid), "-i", "0.2",
                            "tick"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, text=True, bufsize=1)
    lines: list[str] = []
    try:
        read_until(top, r"^\s*\d\d:\d\d:\d\d\s*$", lines)    # armed: tables come
        workload.record("tick", 23)
        read_until(top, r"\btick\b.*\b23\b", lines)
    finally:
        top.send_signal(signal.SIGINT)
        top.communicate(timeout=scaled(20))
        workload.close()
    assert "\x1b[" not in "".join(lines)      # no escape sequences: plain text


def test_bash_completion_script_comes_from_the_cli() -> None:
    env = {**os.environ, "_RECORDER_COMPLETE": "bash_source"}
    result = subprocess.run([str(Path(sys.executable).parent / "recorder")],
                            capture_output=True, text=True, env=env,
                            timeout=scaled(60))
    assert result.returncode == 0
    assert "complete " in result.stdout and "_RECORDER_COMPLETE" in result.stdout
    docs = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    assert '_RECORDER_COMPLETE=bash_source recorder' in docs
