"""fork() while the core is busy, and RECORDER_SHARE children on a full disk.

tests/progs/core_fork.c forks while another thread holds the core's locks
(every child must get them), and forks with a share directory too full for
the child's copy of the parent's rings (the parent's file must not take the
child's records).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.share import (
    BLOCK,
    HEADER_KIND,
    MAPS_KIND,
    SHARD,
    SHARD_KIND,
    blocks,
    parse,
)
from timing import scaled

FORKS = 50


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    return env | extra


@pytest.mark.parametrize("shared", [False, True], ids=["private", "share"])
def test_children_forked_while_a_thread_holds_the_locks_all_finish(
    progs: Path, tmp_path: Path, shared: bool
) -> None:
    env = clean_env(RECORDER_SHARE=str(tmp_path)) if shared else clean_env()
    result = subprocess.run(
        [str(progs / "core_fork"), "race", str(FORKS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=scaled(120),
    )
    assert result.stdout == f"forks {FORKS} ok {FORKS} hung 0\n", result.stderr
    assert result.returncode == 0
    # Each child dumped its one record: no dump was refused as "in progress".
    assert result.stderr.count("child: child pid ") == FORKS
    assert "already in progress" not in result.stderr


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of our own, to fill up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("needs CPUs 0 and 1")
    directory = tmp_path / "small"
    directory.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(directory)],
        check=True,
    )
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def spans(data: bytes) -> list[tuple[int, int, int]]:
    """(kind, offset, bytes) of every block of a share file, in file order."""
    starts = [at - BLOCK.size for _, at, _ in blocks(data)]
    kinds = [kind for kind, _, _ in blocks(data)]
    ends = [*starts[1:], len(data)]
    return [
        (kind, start, end - start)
        for kind, start, end in zip(kinds, starts, ends, strict=True)
    ]


def test_child_that_cannot_copy_its_rings_leaves_the_parent_file_alone(
    progs: Path, small_tmpfs: Path
) -> None:
    process = subprocess.Popen(
        [str(progs / "core_fork"), "share"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(RECORDER_SHARE=str(small_tmpfs), RECORDER_SHARE_KEEP="1"),
    )
    assert process.stdout is not None and process.stdin is not None
    line = process.stdout.readline()
    assert line == f"recorded {process.pid}\n"
    path = small_tmpfs / f"core_fork.{process.pid}.recorder"
    parent = parse(path)
    big = parent.topics["big"]
    assert sorted((s.cpu, s.head) for s in parent.shards if s.topic_id == big) == [
        (0, 1),
        (1, 1),
    ]

    # The child's file takes a header, a maps block, then a copy of each
    # shard block in the parent's order. Leave room for everything before
    # big's CPU 1 shard and half of that one: the copy fails there.
    data = path.read_bytes()
    layout = spans(data)
    assert layout[0][0] == HEADER_KIND
    needed = layout[0][2] + max(size for kind, _, size in layout if kind == MAPS_KIND)
    shards = [(start, size) for kind, start, size in layout if kind == SHARD_KIND]
    for index, (start, size) in enumerate(shards):
        _head, _mask, _keep, topic_id, cpu = SHARD.unpack_from(data, start + BLOCK.size)
        if (topic_id, cpu) == (big, 1):
            needed += size // 2
            left = len(shards) - index  # this one and those made after it
            break
        needed += size
    else:
        pytest.fail("no shard of big for CPU 1 in the parent's file")
    stat = os.statvfs(small_tmpfs)
    free = stat.f_bavail * stat.f_frsize
    assert free > needed
    with open(small_tmpfs / "filler", "wb") as filler:
        os.posix_fallocate(filler.fileno(), 0, free - needed)

    stdout, stderr = process.communicate("fork\n", timeout=scaled(30))
    assert process.returncode == 0, stderr
    _, child_pid, _, status = stdout.split()
    # The child kept the parent's record and its own 500 in its CPU 1 shard.
    assert status == "0", stderr

    parent = parse(path)
    assert sorted((s.cpu, s.head) for s in parent.shards if s.topic_id == big) == [
        (0, 1),
        (1, 1),
    ]
    child = parse(small_tmpfs / f"core_fork.{child_pid}.recorder")
    assert child.pid == int(child_pid)
    # What fitted moved to the child's file; big's CPU 1 shard did not.
    assert [(s.cpu, s.head) for s in child.shards if s.topic_id == big] == [(0, 1)]
    rings = "1 ring" if left == 1 else f"{left} rings"
    assert stderr == (
        f"recorder: RECORDER_SHARE file {small_tmpfs}/core_fork.{child_pid}.recorder"
        f": No space left on device; the child keeps {rings} in memory only\n"
    )
