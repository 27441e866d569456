"""Pin directories on a bpffs anyone may write (bpffs mounts 1777 unless
told): nobody creates the pin directory first, or plants a symlink there."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_helpers import as_nobody, public_dir

from recorder_tracer.errors import TracerError
from recorder_tracer.kernel.pins import PinDir


@pytest.fixture
def open_bpffs() -> Iterator[Path]:
    """A bpffs instance of this test's own, mounted 1777 as bpffs defaults."""
    if os.geteuid() != 0:
        pytest.skip("mounting bpffs needs root")
    with public_dir() as public:
        mount = public / "bpf"
        mount.mkdir()
        subprocess.run(["mount", "-t", "bpf", "-o", "mode=1777", "bpf", str(mount)],
                       check=True)
        try:
            yield mount
        finally:
            subprocess.run(["umount", str(mount)], check=True)


def test_pin_dir_created_first_by_nobody_is_refused(open_bpffs: Path) -> None:
    planted = open_bpffs / "recorder"
    assert as_nobody("mkdir", "-m", "0777", str(planted)).returncode == 0
    with pytest.raises(TracerError, match="belongs to uid 65534"):
        PinDir(planted)


def test_pin_dir_symlink_planted_by_nobody_is_refused(open_bpffs: Path) -> None:
    target = open_bpffs / "elsewhere"
    assert as_nobody("mkdir", str(target)).returncode == 0
    planted = open_bpffs / "recorder"
    assert as_nobody("ln", "-s", str(target), str(planted)).returncode == 0
    with pytest.raises(TracerError, match="not a directory"):
        PinDir(planted)


def test_pin_dir_of_our_own_is_private(open_bpffs: Path) -> None:
    pins = PinDir(open_bpffs / "recorder")
    assert (pins.path.stat().st_mode & 0o777) == 0o700
    # nobody can neither list nor remove what is pinned there.
    assert as_nobody("ls", str(pins.path)).returncode != 0
