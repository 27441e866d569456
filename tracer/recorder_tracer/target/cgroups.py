"""cgroup v2 helpers: where the hierarchy is, a cgroup's directory, and
whether a process is in one (--cgroup)."""

from __future__ import annotations

import os


def cgroup2_root() -> str:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or
    /sys/fs/cgroup/unified on a hybrid host)."""
    try:
        with open("/proc/self/mountinfo") as file:
            for line in file:
                fields = line.split()
                separator = fields.index("-")
                if fields[separator + 1] == "cgroup2":
                    return fields[4]
    except (OSError, ValueError, IndexError):
        pass
    return "/sys/fs/cgroup"


def cgroup_path(cgroup: str) -> str:
    """The directory of cgroup `cgroup`: absolute under the v2 root, or
    relative to it."""
    root = cgroup2_root()
    if cgroup == root or cgroup.startswith(root.rstrip("/") + "/"):
        return cgroup
    return os.path.join(root, cgroup.lstrip("/"))


def in_cgroups(pid: int, cgroups: list[str]) -> bool:
    """True if `pid` belongs to one of `cgroups` (see cgroup_path) or to a
    cgroup below one."""
    try:
        with open(f"/proc/{pid}/cgroup") as file:
            lines = file.read().splitlines()
    except OSError:
        return False
    mine = next((line[3:] for line in lines if line.startswith("0::")), None)
    if mine is None:
        return False
    root = cgroup2_root().rstrip("/")
    for cgroup in cgroups:
        wanted = "/" + cgroup_path(cgroup)[len(root):].strip("/")
        if mine == wanted or mine.startswith(wanted.rstrip("/") + "/"):
            return True
    return False
