"""Create files as root where someone else might have been first.

Root writes snapshots, remembered process maps and lock files. If the
directory was created by another user (a snapshot directory under /tmp,
made before the daemon started), that user can plant a symlink where root
is about to write and have root overwrite any file. So every file root
creates goes through here: into a directory root owns that nobody else may
write (created 0700, refused otherwise), as a new temporary file
(O_CREAT|O_EXCL|O_NOFOLLOW, relative to the directory's descriptor), then
renamed over its name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from recorder_tracer.errors import TracerError


def private_dir(path: str | Path) -> int:
    """A descriptor of directory `path`, created 0700 (parents 0755) if
    missing; TracerError if it is a symlink, is not this user's, or others
    may write to it."""
    folder = Path(path)
    try:
        folder.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY
                             | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise TracerError(f"{folder}: {error.strerror or error}") from None
    info = os.fstat(descriptor)
    problem = None
    if info.st_uid != os.geteuid():
        problem = f"belongs to uid {info.st_uid}, not to this user"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    if problem:
        os.close(descriptor)
        raise TracerError(f"{folder} {problem}: refusing to write there")
    return descriptor


def write_new_file(directory: str | Path, name: str, data: bytes,
                   mode: int = 0o600, sync: bool = True) -> Path:
    """Write `data` as DIRECTORY/NAME atomically: a temporary file of
    `mode`, fsync'd, then renamed over NAME (a symlink there is replaced,
    never followed). Raises TracerError for a directory we may not use,
    OSError (a full disk...) with nothing left behind."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"bad file name {name!r}")
    folder = private_dir(directory)
    try:
        temporary = f".{name}.{secrets.token_hex(6)}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                             | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=folder)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(descriptor, view):]
                if sync:
                    os.fsync(descriptor)
            finally:
                os.close(descriptor)
            os.rename(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            os.unlink(temporary, dir_fd=folder)
            raise
    finally:
        os.close(folder)
    return Path(directory) / name
