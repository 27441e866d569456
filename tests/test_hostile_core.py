"""The C core against its own environment and formats: what a hostile
RECORDER_* variable or format string can do to the process it runs in."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

from helpers.core import run
from hostile_helpers import as_nobody, public_dir
from timing import scaled


def test_crash_dump_bounds_widths_and_never_mallocs(progs: Path) -> None:
    # core_hostile interposes malloc: it exits 97 if the dump mallocs.
    result = run(progs / "core_hostile", "crash", timeout=scaled(30))
    assert "malloc in handler" not in result.stderr
    assert result.returncode == -signal.SIGSEGV, result.stderr[-500:]
    lines = [line.split(" wide: ", 1)[1] for line in result.stderr.splitlines()
             if " wide: " in line]
    assert len(lines) == 6
    # Every width and precision is cut to 128.
    assert lines[:5] == [
        "precision [1.5" + "0" * 127 + "]",
        "width [" + " " * 127 + "7]",
        "width [" + " " * 127 + "8]",
        "star [" + " " * 127 + "9]",
        "star precision [2.5" + "0" * 127 + "]",
    ]


def test_nested_bounded_repetitions_are_refused_quickly(progs: Path) -> None:
    started = time.monotonic()
    pattern = "((a{1,200}){1,200}){1,200}"
    result = run(progs / "core_spec", pattern,
                 env={"RECORDER_TRACES": pattern, "RECORDER_DUMP": pattern},
                 timeout=scaled(30))
    assert time.monotonic() - started < scaled(5)
    assert result.returncode == 0
    assert "invalid topic pattern" in result.stderr
    assert "invalid RECORDER_DUMP pattern" in result.stderr
    assert result.stdout.startswith("status -1\n")  # RECORDER_TRACE_INVALID_NAME


def test_alternation_cannot_escape_whole_name_anchoring(progs: Path) -> None:
    # Wrapped as ^(net)|(x)$ this matched every name starting with "net".
    result = run(progs / "core_spec", "net)|(x)", timeout=scaled(30))
    values = dict(line.split() for line in result.stdout.splitlines())
    assert values["net_send"] == "0" and values["net_recv"] == "0"
    # Alternatives still match whole names, longest first.
    result = run(progs / "core_spec", "net|net_send", timeout=scaled(30))
    values = dict(line.split() for line in result.stdout.splitlines())
    assert values["net_send"] == "1" and values["net_recv"] == "0"


def test_share_path_past_path_max_is_refused_not_truncated(
    progs: Path, tmp_path: Path
) -> None:
    # A directory whose name leaves no room for "/core_spec.PID.recorder":
    # the cut name is "<dir>/core_s", which must not be unlinked.
    directory = tmp_path
    while len(str(directory)) < 4095 - 8 - 200:
        directory = directory / ("d" * 200)
    directory = directory / ("d" * (4095 - 8 - len(str(directory)) - 1))
    directory.mkdir(parents=True)
    planted = Path(str(directory) + "/core_s")
    assert len(str(planted)) == 4095 - 1
    planted.write_text("keep me")
    result = run(progs / "core_spec", env={"RECORDER_SHARE": str(directory)},
                 timeout=scaled(30))
    assert result.returncode == 0
    assert "directory name too long" in result.stderr
    assert planted.read_text() == "keep me"
    assert sorted(p.name for p in directory.iterdir()) == ["core_s"]


def test_setuid_program_ignores_recorder_variables(progs: Path) -> None:
    # nobody runs a set-user-ID root program: RECORDER_SHARE must not make
    # root create (or unlink) files where nobody says.
    with public_dir() as public:
        program = public / "core_spec"
        shutil.copy(progs / "core_spec", program)
        program.chmod(0o4755)
        target = public / "nobody"
        result = as_nobody(str(program), env={
            "RECORDER_SHARE": str(target), "RECORDER_TRACES": "net_send",
            "PATH": "/usr/bin:/bin"}, timeout=scaled(30))
        assert result.returncode == 0, result.stderr
        assert "net_send 0" in result.stdout
        assert list(target.iterdir()) == []
