"""probes/recorder.pc.in: an installed core is found through pkg-config."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from timing import scaled

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build"

USER_PROGRAM = """\
#include <recorder.h>
#include <stdio.h>
RECORDER(installed, 8, "Recorded through an installed core");
int main(void)
{
    RECORD(installed, "installed %d", 23);
    return recorder_dump_for("installed") == 1 ? 0 : 1;
}
"""


def install_like_make(prefix: Path) -> None:
    """What `make install PREFIX=prefix` lays out (the Makefile's recipe)."""
    (prefix / "include" / "recorder").mkdir(parents=True)
    (prefix / "lib" / "pkgconfig").mkdir(parents=True)
    for library in ("librecorder.so", "librecorder.a"):
        shutil.copy(BUILD / library, prefix / "lib")
    for header in (REPO / "probes" / "include").glob("*.h"):
        shutil.copy(header, prefix / "include")
    for header in (REPO / "probes" / "include" / "recorder").glob("*.h"):
        shutil.copy(header, prefix / "include" / "recorder")
    template = (REPO / "probes" / "recorder.pc.in").read_text()
    (prefix / "lib" / "pkgconfig" / "recorder.pc").write_text(
        template.replace("@PREFIX@", str(prefix))
    )


def test_pkg_config_builds_a_program_against_the_installed_core(
    tmp_path: Path,
) -> None:
    if shutil.which("pkg-config") is None:
        pytest.skip("pkg-config is not installed")
    if not (BUILD / "librecorder.so").exists():
        pytest.fail("build/librecorder.so is missing: run `make lib`")
    prefix = tmp_path / "prefix"
    install_like_make(prefix)
    env = os.environ | {"PKG_CONFIG_PATH": str(prefix / "lib" / "pkgconfig")}
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "recorder"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.split()
    assert flags == [
        f"-I{prefix}/include",
        f"-L{prefix}/lib",
        "-lrecorder",
        "-lpthread",
    ]
    source = tmp_path / "user.c"
    source.write_text(USER_PROGRAM)
    program = tmp_path / "user"
    subprocess.run(["cc", str(source), "-o", str(program), *flags], check=True)
    result = subprocess.run(
        [str(program)],
        capture_output=True,
        text=True,
        timeout=scaled(30),
        env={"LD_LIBRARY_PATH": str(prefix / "lib")},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.endswith("installed: installed 23\n")
