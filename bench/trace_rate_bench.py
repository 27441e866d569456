"""Every record delivered? `recorder trace --batch` as users run it, with
the traced program paced at 500 k records/s for 2 s (issue 14's figure).

Runs, as a user would (a subprocess of the `recorder` CLI, "go" on its
stdin for the program):

    echo go | recorder trace --no-snapshots --batch MODE \\
        -c 'build/bench/rate_load_256k 500000 2' load

for MODE in `--json -o FILE`, `-o FILE` (text), `--chrome FILE` and
`-w FILE` (a binary capture), and prints for each run the records the
program made (its own count), those the session received and counted lost
(its summary on stderr: received + lost = produced), the records found in
the output file (one `rate_load.c:` location a record, in every text
format; not counted for -w), wall time, user+sys CPU and max RSS of
`recorder` and its child, and PASS when every record was delivered (made
= received = in the file, lost 0).

The program is bench/rate_load_256k.c: rate_load.c with a 262,144-entry
ring (524 ms of records at 500 k/s), its shards made before it starts
(populating one took up to 0.5 s on this VM), that prints how far behind
its schedule it fell at most ("behind"): paced by the wall clock, it writes
what it owes at once after being kept off its CPU, a burst its ring must
hold (a 1,024-entry ring holds 2 ms; 65,536 entries 131 ms, less than a
machine shared with a VM run kept it off its CPU). `--program rate_load`
runs the 1,024-entry one. The load average is printed before and after:
on a shared machine a FAIL may be someone else's load (bench/README.md).

    sudo .venv/bin/python bench/trace_rate_bench.py               # ~25 s
    sudo .venv/bin/python bench/trace_rate_bench.py --runs 3 --formats json,text
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine
import programs

# Each format's options for `recorder trace`, FILE replaced by the output.
FORMATS = {
    "json": ("--json", "-o", "FILE"),
    "text": ("-o", "FILE"),
    "chrome": ("--chrome", "FILE"),
    "capture": ("-w", "FILE"),
}
CPU_LINE = re.compile(rb"^CPU (\d+): (\d+) received, (\d+) lost \((\d+) produced\)",
                      re.MULTILINE)
LOCATION = b"rate_load.c:"      # once a record in JSON, text and Chrome output
BEHIND = re.compile(rb"^behind at most (\d+) us$", re.MULTILINE)


@dataclass
class Run:
    """One `recorder trace` run and what it delivered."""

    mode: str
    made: int           # the program's own count (-1: it did not say)
    received: int
    lost: int
    produced: int
    in_file: int | None
    wall_s: float
    cpu_s: float
    max_rss_mib: float
    status: int
    behind_ms: float | None     # the most the program fell behind its pace

    @property
    def passed(self) -> bool:
        return (self.status == 0 and self.lost == 0 and self.made > 0
                and self.received == self.made == self.produced
                and self.in_file in (None, self.made))

    def line(self) -> str:
        found = "-" if self.in_file is None else f"{self.in_file:,}"
        behind = "" if self.behind_ms is None else f"  behind {self.behind_ms:.0f} ms"
        return (f"  {self.mode:<8} made {self.made:>9,}  received {self.received:>9,}  "
                f"lost {self.lost:>7,}  in file {found:>9}  {self.wall_s:4.1f} s  "
                f"cpu {self.cpu_s:4.2f} s  rss {self.max_rss_mib:5.0f} MiB  "
                f"{'PASS' if self.passed else 'FAIL'}{behind}")


def recorder_cli() -> str:
    """The `recorder` entry point of this interpreter's environment."""
    beside = Path(sys.executable).parent / "recorder"
    return str(beside) if beside.exists() else "recorder"


def count_in_file(path: str, needle: bytes, block: int = 1 << 20) -> int:
    """Occurrences of `needle` in the file, read a block at a time (a whole
    file read would grow this process, and with it the max RSS of the next
    child, which fork starts from ours)."""
    found, tail = 0, b""
    with open(path, "rb") as stream:
        while data := stream.read(block):
            window = tail + data
            found += window.count(needle)
            tail = window[-(len(needle) - 1):]
    return found


def run_once(program: Path, mode: str, rate: int, seconds: float,
             directory: str) -> Run:
    """One `recorder trace` run; its CPU time and max RSS are those of
    `recorder` and the program it waited for (wait4)."""
    output = os.path.join(directory, f"out.{mode}")
    options = [output if part == "FILE" else part for part in FORMATS[mode]]
    command = [recorder_cli(), "trace", "--no-snapshots", "--batch", *options,
               "-c", f"{program} {rate} {seconds:g}", "load"]
    with open(os.path.join(directory, "stdout"), "w+b") as out, \
            open(os.path.join(directory, "stderr"), "w+b") as err:
        started = time.monotonic()
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out,
                                   stderr=err)
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        process.stdin.close()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    cpus = [tuple(map(int, match)) for match in CPU_LINE.findall(stderr)]
    made_lines = [line for line in stdout.split(b"\n") if line.isdigit()]
    behind = BEHIND.search(stdout)
    in_file = None
    if mode != "capture" and os.path.exists(output):
        in_file = count_in_file(output, LOCATION)
    if process.returncode or not cpus:
        sys.stderr.write(stderr.decode(errors="replace")[-2000:])
    return Run(mode, int(made_lines[-1]) if made_lines else -1,
               sum(c[1] for c in cpus), sum(c[2] for c in cpus),
               sum(c[3] for c in cpus), in_file, wall,
               usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
               process.returncode, int(behind.group(1)) / 1000 if behind else None)


def measure(program: Path, mode: str, rate: int, seconds: float) -> Run:
    with tempfile.TemporaryDirectory(prefix="trace-rate-") as directory:
        return run_once(program, mode, rate, seconds, directory)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=500_000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=1, help="runs of each format")
    parser.add_argument("--formats", default="json,text,chrome,capture",
                        help="comma-separated: " + ", ".join(FORMATS))
    parser.add_argument("--program", default="rate_load_256k",
                        choices=("rate_load_256k", "rate_load"))
    arguments = parser.parse_args(argv)
    modes = [mode for mode in arguments.formats.split(",") if mode]
    unknown = [mode for mode in modes if mode not in FORMATS]
    if unknown:
        parser.error(f"unknown format {unknown[0]!r}")
    if os.geteuid() != 0:
        print("trace_rate_bench: needs root (BPF)")
        return 0
    program = programs.build(programs.Program(
        arguments.program, (f"-I{programs.PROBES / 'include'}",),
        (str(programs.core_library(programs.PROBES)), "-lpthread")))
    print(f"recorder trace --batch, {arguments.program} paced at "
          f"{arguments.rate // 1000} k records/s for {arguments.seconds:g} s "
          f"(every record delivered?)")
    print(f"{machine.describe()}; load average {load_average()}")
    runs: list[Run] = []
    for _ in range(arguments.runs):     # formats alternated, not in blocks
        for mode in modes:
            run = measure(program, mode, arguments.rate, arguments.seconds)
            runs.append(run)
            print(run.line(), flush=True)
    passed = sum(run.passed for run in runs)
    print(f"load average after: {load_average()}")
    print(f"every record delivered: {passed} of {len(runs)} runs "
          f"{'PASS' if passed == len(runs) else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
