"""Open files that a traced process names, as root, without being fooled.

Every path the tracer learns from a process (its maps, its share file, a
snapshot directory) is chosen by whoever runs that process. Opened naively,
as root, such a path may be a symlink to /etc/shadow, a FIFO that blocks
for ever, /dev/zero, a 64 GiB sparse file. Here a path is opened without
following a final symlink and without blocking (O_PATH first: nothing but a
regular file is ever really opened, so no device sees an open), then
checked: a regular file, of the device and inode the process mapped, and
no larger than the caller accepts.
"""

from __future__ import annotations

import os
import stat

DELETED = " (deleted)"


class UntrustedFileError(OSError):
    """A file a process named is not one we may read (the message says why)."""


def _open_path(path: str, follow: bool, identity: tuple[int, int] | None,
               limit: int | None) -> int:
    """An O_PATH descriptor of `path`, checked: a regular file, of
    `identity` (device, inode) if given, of at most `limit` bytes."""
    flags = os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    handle = os.open(path, flags)
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedFileError(f"{path}: not a regular file")
        if identity and identity != (0, 0) and (info.st_dev, info.st_ino) != identity:
            raise UntrustedFileError(f"{path}: not the file the process mapped")
        if limit is not None and info.st_size > limit:
            raise UntrustedFileError(
                f"{path}: {info.st_size} bytes, more than the {limit} accepted")
    except BaseException:
        os.close(handle)
        raise
    return handle


def _open_checked(path: str, follow: bool, identity: tuple[int, int] | None,
                  limit: int | None) -> int:
    handle = _open_path(path, follow, identity, limit)
    try:
        # Reopened through the O_PATH descriptor: the very inode checked.
        return os.open(f"/proc/self/fd/{handle}",
                       os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    finally:
        os.close(handle)


def open_untrusted(path: str | os.PathLike[str], limit: int | None = None) -> int:
    """A read-only descriptor of the regular file at `path` (a final symlink
    is not followed); raises OSError (UntrustedFileError when the file is
    not a regular file or is larger than `limit` bytes)."""
    return _open_checked(os.fspath(path), False, None, limit)


def read_untrusted(path: str | os.PathLike[str], limit: int) -> bytes:
    """The whole regular file at `path`, refused past `limit` bytes (also
    when it grows past them while read)."""
    descriptor = open_untrusted(path, limit)
    try:
        chunks = []
        total = 0
        while True:
            chunk = os.read(descriptor, min(1 << 20, limit + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise UntrustedFileError(
                    f"{os.fspath(path)}: larger than {limit} bytes")
    finally:
        os.close(descriptor)


def open_regular(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor of the regular file `path` names, symlinks
    followed (a probe's path may be /proc/PID/root/... or a symlink root
    named): only a regular file is ever opened for real, so a FIFO or a
    device swapped in at that path cannot block or feed the tracer."""
    return _open_checked(os.fspath(path), True, None, None)


def open_identified(path: str, device: int, inode: int) -> int:
    """A read-only descriptor of the regular file at `path` if it is the
    file (device, inode); a final symlink is followed only for the kernel's
    own /proc/PID/map_files entries."""
    follow = path.startswith("/proc/") and "/map_files/" in path
    return _open_checked(path, follow, (device, inode), None)


def pin_identified(path: str, identity: tuple[int, int] | None) -> int:
    """An O_PATH descriptor of the regular file at `path` (symlinks
    followed), checked to be `identity` (device, inode) when given. It
    holds that inode: /proc/self/fd/N names it to the kernel whatever
    becomes of `path` afterwards (see kernel/arm.py)."""
    return _open_path(path, True, identity, None)


def strip_deleted(path: str) -> tuple[str, bool]:
    """A maps path without the kernel's " (deleted)" suffix, and whether it
    had one (a file really named so keeps it if it exists: see open_mapped)."""
    if path.endswith(DELETED):
        return path[: -len(DELETED)], True
    return path, False


def open_mapped(pid: int, path: str, device: int, inode: int,
                start: int | None = None, end: int | None = None) -> int:
    """A read-only descriptor of the file process `pid` maps at `path`
    (as /proc/PID/maps shows it), checked to be that mapping's (device,
    inode). Tried in order: the mapping's /proc/PID/map_files entry (the
    exact file, even deleted or in another mount namespace; the process
    must still live), the path, the path under /proc/PID/root. Raises
    OSError when none is the mapped file."""
    identity = (device, inode)
    stripped, deleted = strip_deleted(path)
    candidates: list[tuple[str, bool]] = []
    if start is not None and end is not None:
        candidates.append((f"/proc/{pid}/map_files/{start:x}-{end:x}", True))
    names = [path, stripped] if deleted else [path]
    for name in names:
        if name.startswith("/"):
            candidates += [(name, False), (f"/proc/{pid}/root{name}", False)]
    last: OSError = FileNotFoundError(f"{path}: not found")
    for candidate, follow in candidates:
        try:
            return _open_checked(candidate, follow, identity, None)
        except OSError as error:
            last = error
    raise last
