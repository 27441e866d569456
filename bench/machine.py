"""What the benchmark ran on, and how busy the machine was meanwhile.

On shared, noisy CPUs a slow figure may be someone else's load: the
benchmark reports the CPU time that other processes and the hypervisor
(steal) took while it measured, so a reader can tell.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path

CLOCKSOURCE = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource")


VENDORS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}


def cpu_fields() -> dict[str, str]:
    """The first CPU's fields of /proc/cpuinfo (empty if unreadable)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_label() -> str:
    """Vendor and model, the tag printed beside every figure: figures
    differ between the AMD and Intel machines of this kind.

    >>> cpu_label().split()[0] in {"Intel", "AMD", "unknown"} or True
    True
    """
    fields = cpu_fields()
    vendor = VENDORS.get(fields.get("vendor_id", ""),
                         fields.get("vendor_id", "unknown"))
    model = fields.get("model name", "unknown CPU")
    named = model if model.lower().startswith(vendor.lower()) else f"{vendor} {model}"
    return (f"{named}, family {fields.get('cpu family', '?')} "
            f"model {fields.get('model', '?')}")


def tagged(lines: list[str], label: str | None = None) -> list[str]:
    """`lines`, each figure line (one with a digit) followed by the CPU
    label in brackets.

    >>> tagged(["CASE", "rdtsc 8.2", ""], "Intel X")
    ['CASE', 'rdtsc 8.2  [Intel X]', '']
    """
    label = label or cpu_label()
    return [f"{line}  [{label}]" if any(c.isdigit() for c in line) else line
            for line in lines]


def describe() -> str:
    """One line naming the CPU, CPU count, kernel and clocksource."""
    model = "unknown CPU"
    clocksource = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        clocksource = CLOCKSOURCE.read_text().strip()
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
            f"clocksource {clocksource}")


@dataclass(frozen=True)
class Snapshot:
    """CPU time counters at one instant, in seconds."""

    wall: float
    busy: float         # all CPUs, not idle, not steal
    steal: float        # taken by the hypervisor for other guests
    ours: float         # our finished child processes

    @staticmethod
    def now() -> Snapshot:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        ticks = [int(value) for value in fields[:8]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
        hertz = os.sysconf("SC_CLK_TCK")
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return Snapshot(
            wall=time.monotonic(),
            busy=(user + nice + system + irq + softirq) / hertz,
            steal=steal / hertz,
            ours=children.ru_utime + children.ru_stime,
        )


@dataclass
class Load:
    """CPU time others took while the benchmark programs ran."""

    measured: float = 0.0   # wall seconds inside programs
    others: float = 0.0     # CPU seconds of other processes
    steal: float = 0.0      # CPU seconds stolen by the hypervisor

    def add(self, before: Snapshot, after: Snapshot) -> None:
        self.measured += after.wall - before.wall
        ours = after.ours - before.ours
        self.others += max(0.0, after.busy - before.busy - ours)
        self.steal += after.steal - before.steal

    def describe(self) -> str:
        if self.measured <= 0:
            return "machine load: not measured"
        others = self.others / self.measured
        steal = self.steal / self.measured
        text = (f"while measuring, other processes used {others:.2f} CPUs and "
                f"the hypervisor stole {steal:.2f} CPUs on average")
        if others + steal > 0.2:
            text += ("; figures may be pessimistic, the 2-thread case first "
                     "(it needs both CPUs)")
        return text
