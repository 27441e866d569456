"""Collect the benchmark programs' samples, summarize them and judge the targets.

The programs print one JSON object per line: samples
`{"case": ..., "round": ..., "ns": ...}` (thread cases add `per_us`, records
per microsecond over all threads, and `on_cpu`) and checks `{"check": ...}`.
Every figure shown is a median over the samples of a case (for thread cases,
the undisturbed ones when there are enough: select_thread_samples). Ratios
to clock_gettime pair samples of the same round (paired_ratio); the others
are ratios of medians.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

# The rows of the table, in order: case name, label.
ROWS: tuple[tuple[str, str], ...] = (
    ("empty", "loop overhead, per operation"),
    ("clock_gettime", "clock_gettime(CLOCK_MONOTONIC)"),
    ("rdtsc", "rdtsc"),
    ("record0", "RECORD, 0 args"),
    ("record4", "RECORD, 4 args"),
    ("record12", "RECORD, 12 args"),
    ("record_fast", "RECORD_FAST, 4 args"),
    ("disabled", "RECORD, topic off (trace -1)"),
    ("record4_small", "RECORD, 4 args, 9 KiB ring"),
    ("record4_big", "RECORD, 4 args, 9 MiB ring"),
    ("threads1", "RECORD, 4 args, 1 thread"),
    ("threads2", "RECORD, 4 args, 2 threads, each"),
    ("lttng_on", "LTTng-UST tracepoint, recording"),
    ("lttng_off", "LTTng-UST tracepoint, disabled"),
)
REFERENCE = "clock_gettime"
THREAD_CASES = ("threads1", "threads2")
LTTNG_CASES = ("lttng_on", "lttng_off")     # from another program
UNPAIRED = THREAD_CASES + LTTNG_CASES       # not sampled in clock's rounds
# A thread-case sample counts as undisturbed when every thread spent at
# least this share of it on its CPU; with enough such samples, only they
# are used, so another process's load does not pass for the core's.
UNDISTURBED = 0.9
ENOUGH_UNDISTURBED = 5


@dataclass(frozen=True)
class ThreadSample:
    """One sample of a thread case."""

    ns: float           # mean per-thread ns per record
    per_us: float       # records per microsecond, all threads together
    on_cpu: float       # smallest share of the sample a thread was on CPU


@dataclass
class Results:
    """Samples per case, and the programs' own checks."""

    ns: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    threads: dict[str, list[ThreadSample]] = field(
        default_factory=lambda: defaultdict(list)
    )
    checks: dict[str, dict[str, object]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)   # case -> why
    skipped: set[str] = field(default_factory=set)   # on request: no verdict
    chosen: dict[str, list[ThreadSample]] = field(default_factory=dict)
    selection: str = ""     # which thread samples `chosen` holds

    def add_output(self, text: str) -> None:
        """Parse one program's standard output."""
        for line in text.splitlines():
            item = json.loads(line)
            if "check" in item:
                self.checks[str(item["check"])] = item
            elif "per_us" in item:
                self.threads[str(item["case"])].append(ThreadSample(
                    float(item["ns"]), float(item["per_us"]),
                    float(item["on_cpu"])))
            else:
                self.ns[str(item["case"])].append(float(item["ns"]))

    def select_thread_samples(self) -> None:
        """Use only undisturbed thread samples if each thread case has
        enough of them, else all of them; say which in `selection`."""
        calm = {case: [s for s in self.threads.get(case, [])
                       if s.on_cpu >= UNDISTURBED] for case in THREAD_CASES}
        use_calm = all(len(calm[case]) >= ENOUGH_UNDISTURBED
                       for case in THREAD_CASES)
        counts = ", ".join(
            f"{case} {len(calm[case])} of {len(self.threads.get(case, []))}"
            for case in THREAD_CASES)
        self.selection = (
            f"thread cases: samples where every thread kept >= "
            f"{UNDISTURBED:.0%} of its CPU: {counts}; "
            + ("figures use those" if use_calm else
               "too few, figures use all samples (the machine was busy)"))
        for case in THREAD_CASES:
            chosen = calm[case] if use_calm else self.threads.get(case, [])
            self.chosen[case] = chosen
            self.ns[case] = [sample.ns for sample in chosen]

    def median(self, case: str) -> float | None:
        samples = self.ns.get(case)
        if not samples or case in self.missing:
            return None
        return statistics.median(samples)

    def throughput(self, case: str) -> float | None:
        """Median records per microsecond of a thread case (after
        select_thread_samples)."""
        chosen = self.chosen.get(case)
        if not chosen or case in self.missing:
            return None
        return statistics.median(sample.per_us for sample in chosen)


def tracepoint_enabled(text: str) -> bool:
    """True if lttng_bench's output says its `on` event was enabled."""
    for line in text.splitlines():
        item = json.loads(line)
        if item.get("check") == "lttng":
            return bool(item.get("on_enabled"))
    return False


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def paired_ratio(results: Results, case: str, reference: str) -> float | None:
    """Median over rounds of case / reference when both ran in the same
    rounds of the same processes (each pair ~0.1 s apart, which cancels
    slow drifts of the machine's speed); otherwise the ratio of medians."""
    numerators, denominators = results.ns.get(case), results.ns.get(reference)
    if case in results.missing or reference in results.missing:
        return None
    if (numerators and denominators and len(numerators) == len(denominators)
            and case not in UNPAIRED and reference not in UNPAIRED):
        return statistics.median(n / d for n, d in zip(numerators, denominators,
                                                       strict=True))
    return ratio(results.median(case), results.median(reference))


def record_vs_lttng(results: Results) -> float | None:
    return ratio(results.median("record4"), results.median("lttng_on"))


def thread_scaling(results: Results) -> float | None:
    return ratio(results.throughput("threads2"), results.throughput("threads1"))


@dataclass(frozen=True)
class Target:
    """One goal of the issue: a measured value against a limit."""

    text: str
    value: Callable[[Results], float | None]
    limit: float
    at_most: bool           # True: value <= limit; False: value >= limit
    unit: str
    cases: tuple[str, ...]  # what `value` reads

    def judge(self, results: Results) -> tuple[str, float | None]:
        """PASS or FAIL, and the value; SKIP when a case was skipped on
        request; FAIL when a case could not be measured."""
        value = self.value(results)
        if value is None:
            return ("SKIP" if results.skipped & set(self.cases) else "FAIL"), None
        ok = value <= self.limit if self.at_most else value >= self.limit
        return ("PASS" if ok else "FAIL"), value


TARGETS: tuple[Target, ...] = (
    Target("RECORD (4 args) <= 15 ns",
           lambda r: r.median("record4"), 15.0, True, "ns", ("record4",)),
    Target("RECORD <= 0.6x one clock_gettime",
           lambda r: paired_ratio(r, "record4", REFERENCE), 0.6, True, "x",
           ("record4", REFERENCE)),
    Target("RECORD_FAST <= 5 ns",
           lambda r: r.median("record_fast"), 5.0, True, "ns", ("record_fast",)),
    Target("RECORD_FAST <= 0.6x RECORD",
           lambda r: paired_ratio(r, "record_fast", "record4"), 0.6, True, "x",
           ("record_fast", "record4")),
    Target("9 MiB ring <= 1.3x the 144 KiB one",
           lambda r: paired_ratio(r, "record4_big", "record4"), 1.3, True, "x",
           ("record4_big", "record4")),
    Target("disabled RECORD <= 0.55 ns",
           lambda r: r.median("disabled"), 0.55, True, "ns", ("disabled",)),
    Target("2 threads >= 1.8x the throughput of 1",
           thread_scaling, 1.8, False, "x", THREAD_CASES),
    Target("RECORD <= 0.15x LTTng-UST per event",
           record_vs_lttng, 0.15, True, "x", ("record4", "lttng_on")),
)


def format_number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    digits = 3 if abs(value) < 1 else 2
    return f"{value:.{digits}f}{unit}"


def table(results: Results) -> list[str]:
    """The results table: median, min and max ns per operation, and the
    cost as a multiple of one clock_gettime call (paired_ratio)."""
    lines = [
        f"{'CASE':<34} {'NS/OP':>7} {'MIN':>7} {'MAX':>7} {'xCLOCK':>7}",
    ]
    for case, label in ROWS:
        samples = results.ns.get(case)
        if case in results.missing or not samples:
            why = results.missing.get(case, "not measured")
            lines.append(f"{label:<34} {'-':>7}   ({why})")
            continue
        median = statistics.median(samples)
        lines.append(
            f"{label:<34} {format_number(median):>7} "
            f"{format_number(min(samples)):>7} {format_number(max(samples)):>7} "
            f"{format_number(paired_ratio(results, case, REFERENCE)):>7}"
        )
    return lines


def ratios(results: Results) -> list[str]:
    """Throughput of the thread cases and the comparisons the targets use."""
    one, two = results.throughput("threads1"), results.throughput("threads2")
    off = results.median("lttng_off")
    return [
        f"throughput, 1 thread:  {format_number(one)} records/us",
        f"throughput, 2 threads: {format_number(two)} records/us "
        f"= {format_number(thread_scaling(results), 'x')} one thread",
        f"RECORD / LTTng-UST per event: "
        f"{format_number(record_vs_lttng(results), 'x')}",
        f"disabled RECORD / disabled LTTng-UST tracepoint: "
        f"{format_number(ratio(results.median('disabled'), off), 'x')}",
    ]


def verdicts(results: Results) -> list[str]:
    """One PASS/FAIL (or SKIP) line per target, then a count."""
    lines = []
    verdicts = []
    for target in TARGETS:
        verdict, value = target.judge(results)
        verdicts.append(verdict)
        shown = "not measured" if value is None else format_number(
            value, f" {target.unit}")
        lines.append(f"{verdict}  {target.text:<40} {shown}")
    skipped = verdicts.count("SKIP")
    lines.append(f"{verdicts.count('PASS')} of {len(TARGETS) - skipped} targets "
                 f"pass" + (f" ({skipped} skipped)" if skipped else ""))
    return lines


def render(results: Results) -> list[str]:
    """The whole report, as lines."""
    results.select_thread_samples()
    counts = sorted({len(samples) for samples in results.ns.values()}) or [0]
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return [
        *table(results),
        f"(medians of {span} samples per case)",
        results.selection,
        "",
        *ratios(results),
        "",
        *verdicts(results),
    ]
