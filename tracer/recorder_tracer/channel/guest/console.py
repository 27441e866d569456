"""Console sources of the guest: files or FIFOs followed, and the kernel log.

A FileFollower reads a regular file as it grows (from its last 64 KiB when
it starts, from 0 again when it is truncated or replaced, as a rotated log
is) or a FIFO as writers come and go (opened read-write, so it never sees
the end of the last writer). KmsgFollower reads /dev/kmsg from the moment
it starts: one kernel message per read, the text after the header; a
message the kernel overwrote before we read it is counted (`lost`).

Each line goes to `emit(source, text)` stamped by the forwarder with the
guest's CLOCK_MONOTONIC when read; a line longer than MAX_LINE is cut in
pieces of MAX_LINE bytes.
"""

from __future__ import annotations

import errno
import os
import select
import stat
import threading
from collections.abc import Callable

MAX_LINE = 8192
START_TAIL = 64 << 10
POLL_S = 0.1

Emit = Callable[[str, str], None]


class FileFollower:
    """Follow one file or FIFO in a thread until stopped."""

    def __init__(self, path: str, emit: Emit) -> None:
        self.path = path
        self.emit = emit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"console {path}")
        self.lines = 0

    def start(self) -> None:
        self._thread.start()

    def _open(self) -> tuple[int, os.stat_result] | None:
        try:
            info = os.stat(self.path)
            fifo = stat.S_ISFIFO(info.st_mode)
            fd = os.open(self.path, (os.O_RDWR if fifo else os.O_RDONLY)
                         | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        if stat.S_ISREG(info.st_mode) and info.st_size > START_TAIL:
            os.lseek(fd, info.st_size - START_TAIL, os.SEEK_SET)
        return fd, info

    def _run(self) -> None:
        pending = b""
        opened = None
        while not self._stop.is_set():
            if opened is None:
                opened = self._open()
                if opened is None:
                    self._stop.wait(POLL_S * 5)
                    continue
                pending = b""
            fd, info = opened
            readable, _, _ = select.select([fd], [], [], POLL_S)
            try:
                data = os.read(fd, 1 << 16) if readable else b""
            except BlockingIOError:
                data = b""
            if data:
                pending = self._lines(pending + data)
                continue
            if stat.S_ISREG(info.st_mode):
                self._stop.wait(POLL_S)
                if self._replaced(fd, info):
                    os.close(fd)
                    opened = None
        if opened is not None:
            os.close(opened[0])

    def _replaced(self, fd: int, info: os.stat_result) -> bool:
        """Truncated (rewind) or a new file at the path (reopen)."""
        try:
            now = os.stat(self.path)
        except OSError:
            return False
        if (now.st_ino, now.st_dev) != (info.st_ino, info.st_dev):
            return True
        if now.st_size < os.lseek(fd, 0, os.SEEK_CUR):
            os.lseek(fd, 0, os.SEEK_SET)
        return False

    def _lines(self, data: bytes) -> bytes:
        *complete, rest = data.split(b"\n")
        for line in complete:
            self._send(line)
        while len(rest) > MAX_LINE:
            self._send(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        return rest

    def _send(self, line: bytes) -> None:
        for start in range(0, max(len(line), 1), MAX_LINE):
            self.emit(self.path, line[start:start + MAX_LINE].decode("utf-8",
                                                                   "replace"))
            self.lines += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


class KmsgFollower:
    """Follow the kernel log (/dev/kmsg) from now on."""

    source = "kmsg"

    def __init__(self, emit: Emit, path: str = "/dev/kmsg") -> None:
        self.emit = emit
        self.path = path
        self.lost = 0
        self.lines = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="console kmsg")
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.lseek(self._fd, 0, os.SEEK_END)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self._fd], [], [], POLL_S)
            if not readable:
                continue
            try:
                data = os.read(self._fd, MAX_LINE)
            except BlockingIOError:
                continue
            except OSError as error:
                if error.errno == errno.EPIPE:      # overwritten before read
                    self.lost += 1
                    continue
                raise
            _, _, text = data.partition(b";")
            message = text.split(b"\n", 1)[0]       # continuation: key=value
            self.emit(self.source, message.decode("utf-8", "replace"))
            self.lines += 1
        os.close(self._fd)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
