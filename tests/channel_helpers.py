"""Helpers for channel tests: a real `recorder collect` process, its output."""

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
from tracer_helpers import wait_for

RECORDER = [sys.executable, "-m", "recorder_tracer.cli"]


class CollectorProcess:
    """`recorder collect` in a process; its stderr lines in a queue."""

    def __init__(self, out: Path, listen: list[str], *extra: str) -> None:
        argv = [*RECORDER, "collect", "--out", str(out)]
        for url in listen:
            argv += ["--listen", url]
        self.process = subprocess.Popen([*argv, *extra], stderr=subprocess.PIPE,
                                        text=True)
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

