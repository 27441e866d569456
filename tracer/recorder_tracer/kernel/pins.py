"""Pinned state under /sys/fs/bpf/recorder/: what outlives a controller.

With a pin directory, a trace session pins its kernel flight ring and
metrics tables (the `flight`, `flight_head`, `stats` and `value_args` maps of
kernel/bpf/harvest.c, through bcc's BPF_TABLE_PINNED) and each uprobe_multi
link it attaches. A link pinned in
bpffs stays attached, and its semaphore raised, after the controller dies
(kill -9, OOM): armed processes go on writing into the pinned flight ring and counts.
A controller started again with the same directory reuses the maps (the
records made meanwhile are there), arms what it is asked to, and then drops
the previous controller's links. A clean close removes everything.

Link pins are named `link:<pid>:<topic>:<file offset in hex>` (bpffs
refuses dots in names), so what was armed is readable with `ls`.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from recorder_tracer.errors import TracerError
from recorder_tracer.kernel.link import bpf

DEFAULT_PIN_DIR = "/sys/fs/bpf/recorder"
BPF_OBJ_PIN = 6
BPF_FS_MAGIC = 0xCAFE4A11
LINK_PREFIX = "link:"       # bpffs refuses names with a dot


class ObjPinAttr(ctypes.Structure):
    """`union bpf_attr` for BPF_OBJ_PIN / BPF_OBJ_GET."""

    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
        ("path_fd", ctypes.c_int32),
    ]


@dataclass(frozen=True)
class PinnedLink:
    """A link a controller pinned: who and what it keeps armed."""

    path: Path
    pid: int
    topic: str
    file_offset: int


def pin(fd: int, path: str | Path) -> None:
    """Pin the BPF object `fd` (a link, a map) at `path` in bpffs."""
    name = ctypes.create_string_buffer(os.fsencode(str(path)))
    attr = ObjPinAttr(pathname=ctypes.addressof(name), bpf_fd=fd)
    bpf(BPF_OBJ_PIN, attr)


def _is_bpffs(path: Path) -> bool:
    """True when `path` lies on a bpf filesystem (statfs magic)."""
    class StatFs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]
    libc = ctypes.CDLL(None, use_errno=True)
    result = StatFs()
    if libc.statfs(os.fsencode(str(path)), ctypes.byref(result)) != 0:
        return False
    return result.f_type & 0xFFFFFFFF == BPF_FS_MAGIC


def check_owned_dir(path: Path) -> None:
    """Refuse a directory this user does not own or others may write: on a
    world-writable bpffs anyone could create it first, then delete or
    replace the pins put there (a link pin removed detaches the probe)."""
    try:
        info = os.lstat(path)
    except OSError as error:
        raise TracerError(f"pin directory {path}: {error.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise TracerError(f"pin directory {path} is not a directory "
                          "(a symlink?): refusing it")
    if info.st_uid != os.geteuid():
        raise TracerError(f"pin directory {path} belongs to uid {info.st_uid}, "
                          "not to this user: refusing it")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise TracerError(f"pin directory {path} is writable by others "
                          f"(mode {stat.S_IMODE(info.st_mode):o}): refusing it")


class PinDir:
    """One controller's pin directory (create, pin links, take over, clear)."""

    def __init__(self, path: str | Path = DEFAULT_PIN_DIR) -> None:
        self.path = Path(path)
        parent = self.path.parent
        if not _is_bpffs(parent if not self.path.exists() else self.path):
            raise TracerError(f"{parent} is not a bpf filesystem: mount it with "
                              f"`mount -t bpf bpf {parent}`")
        try:
            self.path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as error:
            raise TracerError(f"pin directory {self.path}: {error.strerror}") from None
        check_owned_dir(self.path)

    def map_path(self, name: str) -> str:
        """Where the map `name` is pinned (BPF_TABLE_PINNED's path)."""
        return str(self.path / name)

    def pin_link(self, fd: int, pid: int, topic: str, file_offset: int) -> Path:
        """Pin a link that arms `topic` in `pid`; returns its pin path."""
        safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in topic)
        path = self.path / f"{LINK_PREFIX}{pid}:{safe}:{file_offset:x}"
        path.unlink(missing_ok=True)    # ours, from an earlier arming
        pin(fd, path)
        return path

    def pin_object(self, fd: int, name: str) -> Path:
        """Pin any BPF object (a raw tracepoint link...) as `name`,
        replacing what had that name."""
        path = self.path / name
        path.unlink(missing_ok=True)
        pin(fd, path)
        return path

    def links(self) -> list[PinnedLink]:
        """The links pinned here (by this controller or a previous one)."""
        found = []
        for path in sorted(self.path.glob(f"{LINK_PREFIX}*")):
            parts = path.name.split(":")
            if len(parts) == 4 and parts[1].isdigit():
                found.append(PinnedLink(path, int(parts[1]), parts[2],
                                        int(parts[3], 16)))
        return found

    def drop_links(self, links: list[PinnedLink]) -> None:
        """Unpin `links`: those no fd holds are detached by the kernel."""
        for pinned in links:
            pinned.path.unlink(missing_ok=True)

    def drop_pid(self, pid: int) -> None:
        """Unpin the links of `pid` (it was disarmed, or it exited)."""
        self.drop_links([pinned for pinned in self.links() if pinned.pid == pid])

    def clear(self) -> None:
        """Remove every pin and the directory: a clean end leaves nothing."""
        shutil.rmtree(self.path, ignore_errors=True)
