"""RECORDER_SHARE=DIR: a process's rings in DIR/<comm>.<pid>.recorder.

The file is parsed here with struct, from the layout that
probes/include/recorder/share.h defines and probes/PROBES.md documents.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.share import (
    arguments,
    parse,
    shard_of,
)
from timing import scaled


def start(
    progs: Path, directory: Path, *args: str, keep: bool = False
) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    env["RECORDER_SHARE"] = str(directory)
    if keep:
        env["RECORDER_SHARE_KEEP"] = "1"
    process = subprocess.Popen(
        [str(progs / "core_share"), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    return process, process.stdout.readline()


@pytest.fixture
def running(progs: Path, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    process, line = start(progs, tmp_path, "61")
    assert line == f"ready {process.pid}\n"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(timeout=scaled(10))


def expected_parent_args() -> list[tuple[int, ...]]:
    # 61 records of (i, i * i, -i); the ring keeps the last 23.
    return [(i, i * i, -i) for i in range(38, 61)]


def test_share_file_exists_while_running(
    running: subprocess.Popen[str], tmp_path: Path
) -> None:
    path = tmp_path / f"core_share.{running.pid}.recorder"
    assert path.exists()
    share = parse(path)
    assert share.pid == running.pid
    assert share.entry_size == 144
    assert share.command == "core_share"
    assert Path(share.executable).name == "core_share"
    assert "core_share" in share.maps


def test_share_file_is_private_to_its_owner(
    running: subprocess.Popen[str], tmp_path: Path
) -> None:
    path = tmp_path / f"core_share.{running.pid}.recorder"
    assert path.stat().st_mode & 0o777 == 0o600


def test_share_file_replaces_a_planted_symlink(progs: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    # The next pid is unknown: plant the link where the program will look
    # by starting it paused in a shell that plants first, then execs.
    script = (
        f"ln -s {victim} {tmp_path}/core_share.$$.recorder && "
        f"exec {progs / 'core_share'} 23"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    env["RECORDER_SHARE"] = str(tmp_path)
    process = subprocess.Popen(
        ["sh", "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    share = parse(tmp_path / f"core_share.{process.pid}.recorder")
    process.communicate(timeout=scaled(10))
    assert line == f"ready {process.pid}\n"
    assert share.pid == process.pid
    assert victim.read_text() == "precious"


def test_share_file_lists_topics_and_shards(
    running: subprocess.Popen[str], tmp_path: Path
) -> None:
    share = parse(tmp_path / f"core_share.{running.pid}.recorder")
    assert set(share.topics) == {
        "recorder_core",
        "recorder_signals",
        "shared",
        "unused",
    }
    shard = shard_of(share, "shared")
    assert (shard.head, shard.keep, shard.mask, shard.cpu) == (61, 23, 31, 0)
    assert not [s for s in share.shards if s.topic_id == share.topics["unused"]]


def test_share_file_keeps_last_records_after_sigkill(
    running: subprocess.Popen[str], tmp_path: Path
) -> None:
    running.send_signal(signal.SIGKILL)
    assert running.wait(timeout=scaled(10)) == -signal.SIGKILL
    share = parse(tmp_path / f"core_share.{running.pid}.recorder")
    shard = shard_of(share, "shared")
    assert arguments(shard, 3) == expected_parent_args()
    assert {entry[2] for entry in shard.entries} == {running.pid}  # tid
    assert {entry[6] for entry in shard.entries} == {3}  # nargs


def test_normal_exit_removes_share_file(
    running: subprocess.Popen[str], tmp_path: Path
) -> None:
    path = tmp_path / f"core_share.{running.pid}.recorder"
    running.communicate(timeout=scaled(10))
    assert running.returncode == 0
    assert not path.exists()


def test_share_keep_leaves_file_after_exit(progs: Path, tmp_path: Path) -> None:
    process, _ = start(progs, tmp_path, "61", keep=True)
    process.communicate(timeout=scaled(10))
    assert process.returncode == 0
    share = parse(tmp_path / f"core_share.{process.pid}.recorder")
    assert arguments(shard_of(share, "shared"), 3) == expected_parent_args()


def test_forked_child_gets_its_own_share_file(progs: Path, tmp_path: Path) -> None:
    process, line = start(progs, tmp_path, "fork", "30", "5", keep=True)
    process.communicate(timeout=scaled(10))
    _, parent_pid, _, child_pid = line.split()
    assert int(parent_pid) == process.pid
    parent = parse(tmp_path / f"core_share.{parent_pid}.recorder")
    child = parse(tmp_path / f"core_share.{child_pid}.recorder")
    assert (parent.pid, child.pid) == (process.pid, int(child_pid))
    # The parent's ring holds only its own 30 records (the last 23).
    assert arguments(shard_of(parent, "shared"), 3) == [
        (i, i * i, -i) for i in range(7, 30)
    ]
    # The child's: a copy of the parent's at fork, then its own 5.
    assert arguments(shard_of(child, "shared"), 3) == [
        (i, i * i, -i) for i in range(12, 30)
    ] + [(1000 + i, int(child_pid), 0) for i in range(5)]
    assert [e[2] for e in shard_of(child, "shared").entries][-5:] == [
        int(child_pid)
    ] * 5
    assert child.descriptions == parent.descriptions
    assert child.descriptions["shared"] == "Records kept in the shared file"


def test_unwritable_share_directory_is_reported_and_recording_goes_on(
    progs: Path, tmp_path: Path
) -> None:
    process, line = start(progs, tmp_path / "missing", "61")
    _, stderr = process.communicate(timeout=scaled(10))
    assert line == f"ready {process.pid}\n"
    assert process.returncode == 0
    assert stderr == (
        f"recorder: RECORDER_SHARE: cannot create {tmp_path}/missing/"
        f"core_share.{process.pid}.recorder: No such file or directory\n"
    )
