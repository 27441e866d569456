"""probes/recorder.pc.in: an installed core is found through pkg-config;
probes/abi/: librecorder.so keeps the entry points of its earlier ABI."""

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


# RECORD as the header expanded it before recorder_trace_entry took the seed's
# signature: the record just made passed to recorder_trace_entry(struct
# recorder_topic *, struct recorder_record *). The asm label gives today's
# recorder_trace_record that symbol name, as the old header's RECORD had.
PROGRAM_OF_THE_FIRST_ABI = """\
struct recorder_topic;
struct recorder_record;
void first_abi_trace_entry(struct recorder_topic *, struct recorder_record *)
    __asm__("recorder_trace_entry");
#define recorder_trace_record first_abi_trace_entry
#include <recorder.h>
RECORDER(linked_before, 8, "Linked against the unversioned library");
int main(void)
{
    RECORD(linked_before, "first ABI %d", 42);
    return 0;
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


def test_program_linked_before_symbol_versions_keeps_its_trace_entry(
    tmp_path: Path,
) -> None:
    """A program linked against librecorder.so before it had symbol versions
    (its references unversioned) binds to recorder_trace_entry@RECORDER_1,
    the old signature, and traces its record as it did."""
    if not (BUILD / "librecorder.so").exists():
        pytest.fail("build/librecorder.so is missing: run `make lib`")
    unversioned = tmp_path / "unversioned"
    unversioned.mkdir()
    include = f"-I{REPO / 'probes' / 'include'}"
    # The library as it was built then: same soname, no version script.
    subprocess.run(["cc", "-std=gnu11", "-shared", "-fPIC", "-O2", include,
                    "-o", str(unversioned / "librecorder.so"),
                    *sorted(map(str, (REPO / "probes" / "src").glob("*.c"))),
                    "-lpthread", "-Wl,-soname,librecorder.so"], check=True)
    source = tmp_path / "first_abi.c"
    source.write_text(PROGRAM_OF_THE_FIRST_ABI)
    program = tmp_path / "first_abi"
    subprocess.run(["cc", "-O2", include, str(source), f"-L{unversioned}",
                    "-lrecorder", "-lpthread", "-o", str(program)], check=True)
    symbols = subprocess.run(["readelf", "--dyn-syms", "-W", str(program)],
                             capture_output=True, text=True, check=True).stdout
    [reference] = [line for line in symbols.splitlines()
                   if "recorder_trace_entry" in line]
    assert reference.split()[-1] == "recorder_trace_entry"     # no @version
    result = subprocess.run(
        [str(program)], capture_output=True, text=True, timeout=scaled(30),
        env={"LD_LIBRARY_PATH": str(BUILD), "RECORDER_TRACES": "linked_before"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.endswith("linked_before: first ABI 42\n"), result.stderr


def test_program_linked_now_calls_the_seeds_trace_entry(tmp_path: Path) -> None:
    """tests/progs/seed_trace.c linked against librecorder.so gets
    recorder_trace_entry@RECORDER_2, the seed's signature."""
    if not (BUILD / "librecorder.so").exists():
        pytest.fail("build/librecorder.so is missing: run `make lib`")
    program = tmp_path / "seed_trace"
    subprocess.run(["cc", "-std=gnu11", "-O2", f"-I{REPO / 'probes' / 'include'}",
                    str(REPO / "tests" / "progs" / "seed_trace.c"), f"-L{BUILD}",
                    "-lrecorder", "-lpthread", "-o", str(program)], check=True)
    symbols = subprocess.run(["readelf", "--dyn-syms", "-W", str(program)],
                             capture_output=True, text=True, check=True).stdout
    assert "recorder_trace_entry@RECORDER_2" in symbols
    result = subprocess.run(
        [str(program), "hook"], capture_output=True, text=True,
        timeout=scaled(30),
        env={"LD_LIBRARY_PATH": str(BUILD), "RECORDER_TRACES": "traced"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hook traced order 7\n"
    assert "traced: value 23 name str ratio 0.50\n" in result.stderr


def test_a_link_time_optimised_library_keeps_the_first_abi_entry(
        tmp_path: Path) -> None:
    """-flto drops a top-level .symver asm: built so (as distributions may
    build it), the library must still export recorder_trace_entry@RECORDER_1
    beside the default, or old programs bind to the seed's signature."""
    build = tmp_path / "lto"
    subprocess.run(["make", "-s", "-C", str(REPO), f"BUILD={build}",
                    "CFLAGS=-O2 -flto -fPIC", str(build / "librecorder.so")],
                   check=True, capture_output=True, timeout=scaled(300))
    symbols = subprocess.run(["readelf", "--dyn-syms", "-W",
                              str(build / "librecorder.so")],
                             capture_output=True, text=True, check=True).stdout
    entries = {line.split()[-1] for line in symbols.splitlines()
               if "recorder_trace_entry" in line}
    assert entries == {"recorder_trace_entry@@RECORDER_2",
                       "recorder_trace_entry@RECORDER_1"}
