"""How dumps format arguments, and what RECORD accepts at compile time."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from timing import scaled

REPO = Path(__file__).resolve().parent.parent
INCLUDE = REPO / "probes" / "include"
DUMP_LINE = re.compile(r"^\S+: \[\d+\.\d{9} \d+\] fmt: (.*)$")

EXPECTED = [
    "no arguments",
    "int 23",
    "negative -23 -23 -9007199254740993 -2 -3",
    "unsigned 4294967295 ff 010 18446744073709551615",
    "double 3.500000 -1.230e-03 1e+100  99.9%",
    "float 1.250000",
    "int as double 7.0, double as int 2",
    "twelve 1 -2 3 -4 5 -6 7 -8 9 -10 11 -12",
    "mixed example.org=42 0.50 0x1234 A",
    "pointers 0xdeadbeef (nil)",
    "string [example.org] [exa] [      ab] [ab      ]",
    "null string (null)",
    "long " + "x" * 255,  # 300 recorded, bounded to 255
    "dangling <unreadable {dangling}>",
    "star [    23] [5   ] [3.14]",
    "missing 1 <missing>",
    "hex 0xabcdef 0000BEEF",
    "overlong [%" + "-" * 64 + "*d] next 23",
]


@pytest.fixture(scope="module")
def formatted(progs: Path) -> tuple[list[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    result = subprocess.run(
        [str(progs / "core_format")],
        capture_output=True,
        text=True,
        env=env,
        timeout=scaled(30),
    )
    assert result.returncode == 0, result.stderr
    dangling = result.stdout.split()[1]
    lines = [m[1] for m in map(DUMP_LINE.match, result.stderr.splitlines()) if m]
    return lines, dangling


@pytest.mark.parametrize("index", range(len(EXPECTED)), ids=lambda i: EXPECTED[i][:12])
def test_dump_formats_arguments_like_printf(
    formatted: tuple[list[str], str], index: int
) -> None:
    lines, dangling = formatted
    assert len(lines) == len(EXPECTED)
    assert lines[index] == EXPECTED[index].format(dangling=dangling)


def test_dangling_string_pointer_is_shown_as_unreadable(
    formatted: tuple[list[str], str],
) -> None:
    lines, dangling = formatted
    assert re.fullmatch(r"0x[0-9a-f]+", dangling)
    assert f"dangling <unreadable {dangling}>" in lines


def compile_c(
    compiler: str, source: str, tmp_path: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "user.c"
    path.write_text(source)
    return subprocess.run(
        [
            compiler,
            *flags,
            f"-I{INCLUDE}",
            "-c",
            str(path),
            "-o",
            str(tmp_path / "user.o"),
        ],
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )


THIRTEEN = """\
#include <recorder.h>
RECORDER(many, 8, "Too many arguments");
void f(void)
{
    RECORD(many, "%d %d %d %d %d %d %d %d %d %d %d %d %d",
           1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13);
}
"""

TWELVE = THIRTEEN.replace(' %d",', '",').replace(", 13);", ");")


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_thirteen_arguments_fail_to_compile(compiler: str, tmp_path: Path) -> None:
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed")
    result = compile_c(compiler, THIRTEEN, tmp_path, "-std=gnu11")
    assert result.returncode != 0
    assert "RECORD takes at most 12 arguments" in result.stderr
    assert result.stderr.count("error:") == 1  # that error alone


def test_twelve_arguments_compile(tmp_path: Path) -> None:
    result = compile_c("cc", TWELVE, tmp_path, "-std=gnu11", "-Wall", "-Werror")
    assert result.returncode == 0, result.stderr


USER_CODE = """\
#include <recorder.h>
RECORDER(user, 16, "A user's topic");
RECORDER_TWEAK_DEFINE(knob, 3, "A user's tweak");
int main(void)
{
    const char *name = "x";
    RECORD(user, "no arguments");
    RECORD(user, "one %d", 1);
    RECORD(user, "%s %f %p %u %c", name, 1.5, (void *)&name, 2u, 'c');
    RECORD_FAST(user, "fast %ld", -1L);
    record(user, "tweak %lld", (long long)RECORDER_TWEAK(knob));
    RECORD(user, "%d %d %d %d %d %d %d %d %d %d %d %d",
           1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12);
    if (RECORDER_TRACE(user) > 0)
        recorder_trace_set("user=0");
    return (int)recorder_dump();
}
"""

STRICT = (
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-pedantic",
    "-Werror",
    "-O2",
    # What careful projects add: the header must not be the one to warn.
    "-Wconversion",
    "-Wsign-conversion",
    "-Wshadow",
    "-Wredundant-decls",
    "-Wstrict-prototypes",
    "-Wmissing-prototypes",
    "-Wcast-qual",
    "-Wundef",
)


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_header_compiles_in_strict_iso_c(compiler: str, tmp_path: Path) -> None:
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed")
    result = compile_c(compiler, USER_CODE, tmp_path, *STRICT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_topic_definition_wants_a_semicolon(tmp_path: Path) -> None:
    source = USER_CODE.replace('"A user\'s topic");', '"A user\'s topic")')
    assert source != USER_CODE
    result = compile_c("gcc", source, tmp_path, "-std=c11")
    assert result.returncode != 0
    assert "expected ';'" in result.stderr.replace("\u2018", "'").replace("\u2019", "'")
