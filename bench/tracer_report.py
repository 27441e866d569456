"""The tracer benchmark's cases, samples, load and verdicts: what
tracer_bench.py measures and how it reports it.

Every figure is a median over samples of a case; the x-columns and the
targets use medians of per-round ratios (samples of one round ran within
about 30 ms of each other). A case whose tracer missed records shows no
figure and its targets no verdict.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Case:
    """One way of tracing a topic: a row of the table."""

    name: str
    label: str


CASES = (
    Case("empty", "empty bcc program"),
    Case("metrics", "harvest: metrics (count+value+interval)"),
    Case("flight", "harvest: metrics + flight"),
    Case("stream", "harvest: metrics + flight + stream"),
    Case("count", "bpftrace @ = count()"),
    Case("tid", "bpftrace @[tid] = count()"),
)
STRING_CASE = Case("flight_str", "harvest: metrics + flight, %s arg")
LABEL = 40      # width of the table's first column


class Load:
    """CPU time that processes other than ours (this one, the traced
    program, bpftrace) took while we measured: machine.Load counts only
    finished children, and ours are running."""

    def __init__(self) -> None:
        self.measured = 0.0
        self.others = 0.0

    @contextlib.contextmanager
    def window(self, pids: Callable[[], list[int]]) -> Iterator[None]:
        wall, busy, ours = time.monotonic(), _busy_seconds(), _cpu_seconds(pids())
        yield
        mine = _cpu_seconds(pids()) - ours
        self.others += max(0.0, _busy_seconds() - busy - mine)
        self.measured += time.monotonic() - wall

    def describe(self) -> str:
        if self.measured <= 0:
            return "machine load: not measured"
        share = self.others / self.measured
        text = f"while measuring, other processes used {share:.2f} CPUs on average"
        if share > 0.2:
            text += "; figures may be pessimistic, the stream's first"
        return text


def _busy_seconds() -> float:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in {os.getpid(), *pids}:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])      # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class CostResults:
    """Samples (ns per record) per case; paired ratios; checks."""

    ns: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    ratios: dict[tuple[str, str], list[float]] = field(
        default_factory=lambda: defaultdict(list))
    checks: list[str] = field(default_factory=list)
    failed_checks: set[str] = field(default_factory=set)

    def median(self, case: str) -> float | None:
        values = self.ns.get(case)
        return statistics.median(values) if values else None

    def ratio(self, case: str, reference: str) -> float | None:
        values = self.ratios.get((case, reference))
        return statistics.median(values) if values else None


def check(results: CostResults, case: str, what: str, seen: int | None,
          made: int) -> None:
    """Record whether a tracer saw exactly the records made; a case that
    did not is shown without figures."""
    ok = seen == made
    results.checks.append(f"{what}: {seen} of {made} records"
                          + ("" if ok else "  <-- MISMATCH"))
    if not ok:
        results.failed_checks.add(case)


def label(case: str) -> str:
    """The table label of a case."""
    return next(c.label for c in (*CASES, STRING_CASE) if c.name == case)




def render_costs(results: CostResults) -> list[str]:
    lines = [f"{'RECORD, 4 args; CASE':<{LABEL}} {'NS/REC':>7} {'MIN':>7} {'MAX':>7} "
             f"{'xEMPTY':>7} {'xCOUNT':>7}"]
    rows = [("unarmed", "no tracer in the process"),
            ("cold", "unarmed topic, another one armed")]
    rows += [(case.name, case.label) for case in (*CASES, STRING_CASE)]
    for name, label in rows:
        values = results.ns.get(name)
        if not values or name in results.failed_checks:
            why = "its tracer missed records" if values else "not measured"
            lines.append(f"{label:<{LABEL}} {'-':>7}  ({why})")
            continue
        ratios = [results.ratio(name, reference) for reference in ("empty", "count")]
        lines.append((
            f"{label:<{LABEL}} {statistics.median(values):>7.1f} {min(values):>7.1f} "
            f"{max(values):>7.1f} "
            + " ".join(f"{ratio:>7.3f}" if ratio is not None else f"{'':>7}"
                       for ratio in ratios)).rstrip())
    counts = sorted({len(values) for values in results.ns.values()})
    samples = "-".join(str(count) for count in (counts[0], counts[-1])[:len(counts)])
    lines.append(f"(medians of {samples} samples; xEMPTY, xCOUNT: medians of "
                 "per-round")
    lines.append(" ratios to the empty program and to bpftrace count(); the first "
                 "two rows")
    lines.append(" are the core alone: the topic's probe stays unarmed)")
    return lines


@dataclass(frozen=True)
class Verdict:
    passed: bool | None     # None: not measured
    label: str
    value: str


def judge(results: CostResults | None, runs: list[Any] | None,
          paced_rate: int) -> list[Verdict]:
    verdicts: list[Verdict] = []
    if results is not None:
        # A metrics-only topic (count, value and interval aggregated) must
        # stay within 1.1x the empty-program floor (issue 5).
        for case, floor in (("metrics", 1.1), ("flight", 1.2)):
            for reference, limit, name in (("empty", floor, "the empty program"),
                                           ("count", 1.0, "bpftrace count()")):
                ratio = results.ratio(case, reference)
                if {case, reference} & results.failed_checks:
                    ratio = None
                verdicts.append(Verdict(
                    None if ratio is None else ratio <= limit,
                    f"{case} <= {limit}x {name}",
                    "-" if ratio is None else f"{ratio:.3f} x"))
        unarmed, cold = results.median("unarmed"), results.median("cold")
        ratio = cold / unarmed if cold and unarmed else None
        verdicts.append(Verdict(None if ratio is None else ratio <= 2.0,
                                "unarmed topic <= 2x its no-tracer cost",
                                "-" if ratio is None else f"{ratio:.2f} x"))
    if runs is not None:
        fast = next((run for run in runs if run.consumer == "count"), None)
        verdicts.append(Verdict(
            None if fast is None else fast.received_per_s >= 1e6 and fast.balanced,
            "stream >= 1 M records/s, exact account",
            "-" if fast is None else f"{fast.received_per_s / 1e6:.2f} M/s"))
        paced = next((run for run in runs if run.label.startswith("paced")), None)
        verdicts.append(Verdict(
            None if paced is None else paced.lost == 0 and paced.balanced,
            f"stream loses nothing at {paced_rate // 1000} k/s",
            "-" if paced is None else f"{paced.lost} lost"))
    return verdicts


def render_verdicts(verdicts: list[Verdict]) -> list[str]:
    lines = []
    for verdict in verdicts:
        word = {True: "PASS", False: "FAIL", None: "----"}[verdict.passed]
        lines.append(f"{word}  {verdict.label:<42} {verdict.value}")
    judged = [verdict for verdict in verdicts if verdict.passed is not None]
    lines.append(f"{sum(v.passed is True for v in judged)} of {len(judged)} "
                 "tracer targets pass")
    return lines
