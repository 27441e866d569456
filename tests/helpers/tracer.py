"""Helpers for tracer tests: workload processes and a session in a thread."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from timing import scaled

from recorder_tracer.decode.record import Record
from recorder_tracer.session.loop import TraceOptions, TraceSession


class Workload:
    """A running build/progs/workload_ticks (or another program of the same
    protocol: "ready PID", then "done" after each command line)."""

    def __init__(self, progs: Path, program: str = "workload_ticks",
                 command: list[str] | None = None) -> None:
        self.process = subprocess.Popen(
            command or [str(progs / program)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline().split()
        assert ready[0] == "ready"
        self.pid = int(ready[1])

    def record(self, topic: str, count: int) -> None:
        """Make `count` records in `topic`; returns once they are made."""
        self.send(f"{topic} {count}")

    def send(self, command: str) -> None:
        """Send one command line; returns once the program says "done"."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{command}\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "done"

    def close(self) -> int:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("exit\n")
            self.process.stdin.flush()
        return self.process.wait(timeout=scaled(10))


RECORDS = 3_000      # what a Victim records: its 1,024-entry ring wraps ~3 times


class Victim:
    """build/progs/snapshot_victim: records on a line, dies on the next."""

    def __init__(self, progs: Path, handlers: bool = False) -> None:
        argv = [str(progs / "snapshot_victim"), "victim", str(RECORDS)]
        if handlers:
            argv.append("handlers")
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        assert self.process.stdout is not None
        self.pid = int(self.process.stdout.readline().split()[1])

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def record(self) -> None:
        self.send("go")
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "recorded"


class BackgroundSession:
    """A TraceSession running in a thread, collecting records."""

    def __init__(self, options: TraceOptions) -> None:
        self.records: list[Record] = []
        self.reports: list[str] = []
        self.session = TraceSession(options, self.records.append,
                                    self.reports.append)
        self.session.start()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._stopping = threading.Event()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopping.is_set() and self.session.poll(timeout_ms=20):
            pass

    def stop(self) -> list[Record]:
        """Stop polling, detach, drain; returns every record in order."""
        self._stopping.set()
        self._thread.join(timeout=scaled(10))
        self.session.close()
        return self.records


def stop_while_traced(program: subprocess.Popen[str], session: TraceSession) -> None:
    """Ends a test program that, done recording, waits for "stop" and says
    "done" (tests/progs/batch_*.c): it must still run, so that what arrived
    came from harvests while it ran, not from its exit's; then the session
    closes."""
    assert program.stdin is not None and program.stdout is not None
    assert program.poll() is None, "it must still run: no exit harvest"
    program.stdin.write("stop\n")
    program.stdin.flush()
    assert program.stdout.readline().strip() == "done"
    assert program.wait(timeout=scaled(10)) == 0
    session.close()


def wait_for(condition: Callable[[], Any], timeout: float | None = None) -> Any:
    """Poll `condition` until truthy; fail after `timeout` seconds (default
    scaled(10))."""
    deadline = time.monotonic() + (scaled(10) if timeout is None else timeout)
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def semaphore_value(pid: int, path: str, topic: str) -> int:
    """The current value of topic's USDT semaphore in process `pid`."""
    from recorder_tracer.target import notes
    from recorder_tracer.target.memory import read_maps

    probe = next(p for p in notes.probes_in_file(path)
                 if p.provider == "recorder" and p.name == topic)
    base = min(m.start - m.offset for m in read_maps(pid)
               if m.path == str(Path(path).resolve()))
    with open(f"/proc/{pid}/mem", "rb") as memory:
        memory.seek(base + probe.semaphore)
        return int.from_bytes(memory.read(2), "little")


def kernel_at_least(major: int, minor: int) -> bool:
    """Whether this kernel's release is at least `major`.`minor`."""
    numbers = os.uname().release.split("-")[0].split(".")
    return (int(numbers[0]), int(numbers[1])) >= (major, minor)


def uprobe_multi_links_here() -> bool:
    """Whether this kernel has process-filtered uprobe_multi links. Where
    it has none, first asserts that it is a kernel without them (before
    6.9, as the VM's 6.1): a test of links then checks what this kernel
    does instead, and is never silently skipped where links should work."""
    from recorder_tracer.kernel.link import uprobe_multi_supported
    if uprobe_multi_supported():
        return True
    assert not kernel_at_least(6, 9), \
        f"Linux {os.uname().release} has uprobe_multi links, the probe says none"
    return False


PY_TICKS = Path(__file__).resolve().parent.parent / "workloads" / "py_ticks.py"


class PythonWorkload:
    """tests/workloads/py_ticks.py, driven line by line."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(PY_TICKS)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.pid = int(self.process.stdout.readline().split()[1])

    def record(self, topic: str, count: int) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{topic} {count}\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "done"

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
        self.process.wait(timeout=scaled(10))

    def __enter__(self) -> PythonWorkload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
