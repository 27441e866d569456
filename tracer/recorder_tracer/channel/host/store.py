"""Where the collector writes one guest's stream, and what it wrote last.

    OUT/<hostname>/<boot id>.<stream>/
        guest.json        who, the clock estimate, the guest's drop counters
        records.jsonl     one record a line: seq, n, ts (guest), host_ts, ...
        console.jsonl     one console line a line
        metrics.jsonl     one line a metrics frame: the samples
        snapshots/NAME    crash snapshot files, as the guest's daemon wrote them
        snapshots.jsonl   one line a snapshot received
        clock.jsonl       the clock points kept and the estimate after each
        gaps.jsonl        sequence ranges the collector never got

Every name comes from the guest and is hostile: it is reduced to
[A-Za-z0-9._-] (with a hash when that changed it), never starts with a dot,
and every directory and file is opened relative to its parent's descriptor
with O_NOFOLLOW: a symlink planted anywhere below OUT is refused, never
followed.

The last item written is the sequence number (and record index) of the
last complete line of the data files: a collector killed -9 mid-write
truncates the torn line when it starts again, and resumes there, so no item
is written twice. guest.json repeats it for people.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from typing import Any

from recorder_tracer.errors import TracerError
from recorder_tracer.terminal import json_escaped

DATA_FILES = ("records.jsonl", "console.jsonl", "metrics.jsonl", "snapshots.jsonl",
              "gaps.jsonl")
UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_NAME = 64
TAIL_CHUNK = 1 << 16
MAX_TAIL = 64 << 20
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC


def safe_name(text: str, fallback: str = "guest") -> str:
    """A name a guest chose, safe as one path component.

    >>> safe_name("web-1"), safe_name("../../etc")
    ('web-1', 'etc-7baf5cb6')
    >>> safe_name(".."), safe_name("a/b")
    ('guest-9d891e73', 'a_b-3ec69c85')
    """
    cleaned = UNSAFE.sub("_", text)[:MAX_NAME].lstrip("._") or fallback
    if cleaned != text:
        cleaned += "-" + hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()[:8]
    return cleaned


def open_dir(parent: int, name: str) -> int:
    """The descriptor of directory NAME under `parent`, made if missing;
    OSError (ELOOP, ENOTDIR) if NAME is a symlink or not a directory."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o750, dir_fd=parent)
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as error:
        raise OSError(error.errno, f"folder {name!r} is a symlink or not a "
                      "directory: refused") from None


def open_out(path: str) -> int:
    """The output directory's descriptor (made if missing)."""
    try:
        os.makedirs(path, 0o750, exist_ok=True)
        return os.open(path, DIR_FLAGS)
    except OSError as error:
        raise TracerError(f"cannot use {path} as the output directory: "
                          f"{error.strerror}") from None


class StreamStore:
    """The files of one guest stream (host, boot, daemon run)."""

    def __init__(self, out_fd: int, hostname: str, boot_id: str, stream: str) -> None:
        self.hostname, self.boot_id, self.stream = hostname, boot_id, stream
        self.folder = (f"{safe_name(hostname)}/"
                       f"{safe_name(boot_id, 'boot')}.{safe_name(stream, 'stream')}")
        self._out_fd = out_fd
        self._fd: int | None = None
        self.lock = threading.Lock()
        self._files: dict[str, int] = {}
        self._snapshot_fd: int | None = None
        self.last_seq, self.last_n = self._recover()
        self.release()

    @property
    def fd(self) -> int:
        """The folder's descriptor, opened (again) on demand: a stream with
        no connection holds none (guests come and go, descriptors do not
        pile up)."""
        if self._fd is None:
            host_fd = open_dir(self._out_fd, self.folder.split("/")[0])
            try:
                self._fd = open_dir(host_fd, self.folder.split("/")[1])
            finally:
                os.close(host_fd)
        return self._fd

    def _open(self, name: str) -> int:
        fd = self._files.get(name)
        if fd is None:
            fd = self._files[name] = os.open(name, FILE_FLAGS, 0o640, dir_fd=self.fd)
        return fd

    def _recover(self) -> tuple[int, int | None]:
        """The last item written, from the data files' last complete lines;
        a torn last line (killed mid-write) is cut off first."""
        best: tuple[int, int | None] = (0, None)
        for name in DATA_FILES:
            try:
                fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=self.fd)
            except FileNotFoundError:
                continue
            try:
                line = _last_line(fd)
            finally:
                os.close(fd)
            if line is None:
                continue
            try:
                value = json.loads(line)
                here = (int(value["seq"]), value.get("n"))
            except (ValueError, KeyError, TypeError):
                continue
            if (here[0], _n(here[1])) > (best[0], _n(best[1])):
                best = here
        return best

    def write(self, name: str, data: bytes) -> None:
        """Append `data` (whole lines) to file `name` in one write() loop."""
        fd = self._open(name)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def write_json(self, name: str, value: dict[str, Any]) -> None:
        self.write(name, (json_escaped(json.dumps(value, separators=(",", ":"),
                                                  ensure_ascii=False)) + "\n").encode())

    def write_snapshot(self, name: str, content: bytes) -> str:
        """Write a snapshot file (replacing one of the same name, as the
        guest's daemon rewrites a snapshot to add the exit status); its
        safe name."""
        if self._snapshot_fd is None:
            self._snapshot_fd = open_dir(self.fd, "snapshots")
        safe = safe_name(name, "snapshot")
        temporary = f".{safe}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o640, dir_fd=self._snapshot_fd)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(temporary, safe, src_dir_fd=self._snapshot_fd,
                  dst_dir_fd=self._snapshot_fd)
        return safe

    def replace_json(self, name: str, value: dict[str, Any]) -> None:
        """Rewrite small file `name` atomically (guest.json)."""
        temporary = f".{name}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o640, dir_fd=self.fd)
        try:
            os.write(fd, (json.dumps(value, indent=1) + "\n").encode())
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def release(self) -> None:
        """Close every descriptor (reopened when needed)."""
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()
        if self._snapshot_fd is not None:
            os.close(self._snapshot_fd)
            self._snapshot_fd = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    close = release


def _n(value: Any) -> int:
    """A line's record index, a whole-frame line counting as the largest."""
    return value if isinstance(value, int) else 1 << 62


def _last_line(fd: int) -> bytes | None:
    """The last complete line of an open file; truncates a torn tail."""
    size = os.fstat(fd).st_size
    end = size
    tail = b""
    while end > 0 and size - end < MAX_TAIL:
        start = max(0, end - TAIL_CHUNK)
        tail = os.pread(fd, end - start, start) + tail
        end = start
        cut = tail.rfind(b"\n")
        if cut < 0:
            continue
        if cut != len(tail) - 1:        # a torn line after the last newline
            os.ftruncate(fd, end + cut + 1)
            tail = tail[:cut + 1]
        previous = tail.rfind(b"\n", 0, len(tail) - 1)
        if previous >= 0 or end == 0:
            return tail[previous + 1:-1]
    if size and end == 0 and b"\n" not in tail:
        os.ftruncate(fd, 0)             # one torn line and nothing else
    return None

