"""Helpers for channel tests: real `recorder collect` and `recorder daemon
--forward` processes, and what the collector wrote."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from timing import scaled

from helpers.prometheus import free_port
from helpers.tracer import wait_for

RECORDER = [sys.executable, "-m", "recorder_tracer.cli"]
TICKS = 23      # records a channel test makes a workload write


# Every collector and daemon a test starts: reap_all() ends those a failed
# assertion left running (a test's own cleanup may stop at its first assert).
STARTED: list[subprocess.Popen[str]] = []


def reap_all() -> None:
    """Kill (by pid, our own children only) what is still running."""
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()


class CollectorProcess:
    """`recorder collect` in a process; its stderr lines in a queue."""

    def __init__(self, out: Path, listen: list[str], *extra: str) -> None:
        argv = [*RECORDER, "collect", "--out", str(out)]
        for url in listen:
            argv += ["--listen", url]
        self.process = subprocess.Popen([*argv, *extra], stderr=subprocess.PIPE,
                                        text=True)
        STARTED.append(self.process)
        self.lines: list[str] = []
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()
        banner = self.wait_line(r"^Collecting on (.*) into ")
        self.urls = re.match(r"^Collecting on (.*) into ", banner).group(1).split(", ")

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._queue.put(line.rstrip("\n"))

    def wait_line(self, pattern: str, timeout: float = 30) -> str:
        """The first stderr line (seen so far or next) matching `pattern`."""
        regex = re.compile(pattern)

        def found() -> str | None:
            while True:
                try:
                    self.lines.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            return next((line for line in self.lines if regex.search(line)), None)

        try:
            return wait_for(found, scaled(timeout))
        except AssertionError:
            raise AssertionError(f"no line matching {pattern!r} in "
                                 f"{self.lines}") from None

    def said(self) -> list[str]:
        """Every stderr line so far (for a failure's message)."""
        while True:
            try:
                self.lines.append(self._queue.get_nowait())
            except queue.Empty:
                return self.lines

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=scaled(10))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=scaled(20))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def stream_dirs(out: Path) -> list[Path]:
    return sorted(path.parent for path in out.glob("*/*/guest.json"))


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSON-lines file a live collector may be
    appending to (a line without its newline yet is not read)."""
    if not path.exists():
        return []
    text = path.read_text()
    complete = text[:text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.split("\n") if line]


def count_lines(out: Path, name: str) -> int:
    total = 0
    for folder in stream_dirs(out):
        path = folder / name
        if path.exists():
            with open(path, "rb") as file:
                total += sum(1 for _ in file)
    return total


class DaemonProcess:
    """`recorder daemon ... --forward URL`, started once its banner shows."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [*RECORDER, "daemon", "--listen", f"127.0.0.1:{free_port()}", *args],
            stderr=subprocess.PIPE, text=True)
        STARTED.append(self.process)
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_line("^Serving metrics on .*forwarding to ")

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))

    def said(self) -> list[str]:
        """Every stderr line so far (for a failure's message)."""
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.seen

    def wait_line(self, pattern: str) -> str:
        def found() -> str | None:
            while not self.lines.empty():
                self.seen.append(self.lines.get())
            if self.process.poll() is not None:
                raise AssertionError(f"the daemon ended: {self.seen}")
            return next((line for line in self.seen if re.search(pattern, line)),
                        None)
        return wait_for(found, scaled(60))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=scaled(30))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        assert self.process.stderr is not None
        threading.Event().wait(0.2)     # the reader thread's last lines
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.process.returncode


def records_of(out: Path) -> list[dict]:
    return [record for folder in stream_dirs(out)
            for record in read_lines(folder / "records.jsonl")]


def latest_sample(folder: Path, name: str) -> float | None:
    """The last metrics frame's value of sample `name` (exact key match on
    the metric name and a label substring)."""
    for line in reversed(read_lines(folder / "metrics.jsonl")):
        for key, value in line["samples"].items():
            if key.startswith(name.split("{")[0] + "{") and all(
                    part in key for part in name.split("{")[1].rstrip("}").split(",")):
                return value
    return None
