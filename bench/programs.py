"""Compile the benchmark programs into build/bench/ with the system C compiler.

By default record_bench links the core that `make lib` built. Given another
copy of probes/ (`run.py --core DIR`, to try a change to the hot path), the
core is compiled from DIR with the Makefile's flags into build/bench/core/.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = ROOT / "build" / "bench"
PROBES = ROOT / "probes"
CFLAGS = ("-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-Werror")
CORE_CFLAGS = (*CFLAGS, "-fPIC")


class BuildError(RuntimeError):
    """A program did not compile; the message holds the compiler's output."""


def compiler() -> str:
    return os.environ.get("CC", "cc")


def compile_command(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"{' '.join(command)}\n{result.stderr.strip()}")


def core_library(probes: Path) -> Path:
    """The static core built from `probes` (a copy of probes/)."""
    if probes.resolve() == PROBES:
        library = ROOT / "build" / "librecorder.a"
        if not library.exists():     # run.py run by hand, before `make lib`
            subprocess.run(["make", "-C", str(ROOT), "lib"], check=True)
        return library
    objects = OUT / "core"
    objects.mkdir(parents=True, exist_ok=True)
    for stale in objects.glob("*.o"):
        stale.unlink()
    for source in sorted((probes / "src").glob("*.c")):
        compile_command([compiler(), *CORE_CFLAGS, f"-I{probes / 'include'}",
                         "-c", str(source), "-o",
                         str(objects / f"{source.stem}.o")])
    library = objects / "librecorder.a"
    library.unlink(missing_ok=True)
    subprocess.run(["ar", "rcs", str(library), *map(str, objects.glob("*.o"))],
                   check=True)
    return library


@dataclass(frozen=True)
class Program:
    """One benchmark program: bench/<name>.c, its flags and libraries."""

    name: str
    flags: tuple[str, ...]
    libraries: tuple[str, ...]

    @property
    def path(self) -> Path:
        return OUT / self.name


def record_bench(probes: Path = PROBES) -> Program:
    """The recorder benchmark, against the core in `probes`."""
    return Program("record_bench", (f"-I{probes / 'include'}",),
                   (str(core_library(probes)), "-lpthread"))


def lttng_bench() -> Program:
    """The LTTng-UST benchmark, its tracepoint provider compiled in."""
    return Program("lttng_bench", (f"-I{BENCH}",),
                   ("-llttng-ust", "-ldl", "-lpthread"))


def build(program: Program) -> Path:
    """Compile `program` (always: it takes a fraction of a second and is
    never stale); raise BuildError with the compiler's output on failure."""
    OUT.mkdir(parents=True, exist_ok=True)
    compile_command([compiler(), *CFLAGS, *program.flags,
                     str(BENCH / f"{program.name}.c"), *program.libraries,
                     "-o", str(program.path)])
    return program.path
