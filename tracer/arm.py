"""Arm recorder probes per PID: uprobes with the topic's semaphore.

bcc 0.26's Python binding calls `bpf_attach_uprobe` with 6 of its 7
arguments (the 7th, `ref_ctr_offset`, is then stack garbage) and refuses a
semaphore probe without a PID. We call libbcc directly through a correct
7-argument prototype, on our own ctypes handle so bcc's stays untouched.
The kernel then increments the topic's semaphore in that one process while
the uprobe is attached, and decrements it on detach: arming topic A in
process P costs nothing to P's other topics or to other processes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass

from recorder_tracer.flight import ARM

_ATTACH_ENTRY = 0   # enum bpf_probe_attach_type: BPF_PROBE_ENTRY


def _load_libbcc() -> ctypes.CDLL:
    name = ctypes.util.find_library("bcc") or "libbcc.so.0"
    library = ctypes.CDLL(name, use_errno=True)
    library.bpf_attach_uprobe.restype = ctypes.c_int
    library.bpf_attach_uprobe.argtypes = [
        ctypes.c_int,       # program fd
        ctypes.c_int,       # attach type
        ctypes.c_char_p,    # event name
        ctypes.c_char_p,    # binary path
        ctypes.c_uint64,    # file offset of the probe site
        ctypes.c_int,       # pid (-1: every process)
        ctypes.c_uint32,    # ref_ctr_offset: file offset of the semaphore
    ]
    library.bpf_close_perf_event_fd.restype = ctypes.c_int
    library.bpf_close_perf_event_fd.argtypes = [ctypes.c_int]
    return library


_libbcc: ctypes.CDLL | None = None


def libbcc() -> ctypes.CDLL:
    """The libbcc handle with correct prototypes, loaded once."""
    global _libbcc
    if _libbcc is None:
        _libbcc = _load_libbcc()
    return _libbcc


class ArmError(RuntimeError):
    """A probe could not be attached; the message says which and why."""


@dataclass(frozen=True)
class Attachment:
    """One armed probe site in one process."""

    event_name: bytes
    perf_fd: int
    pid: int
    path: str
    file_offset: int
    semaphore_offset: int


def attach_uprobe(
    program_fd: int,
    path: str,
    file_offset: int,
    pid: int,
    semaphore_offset: int = 0,
) -> Attachment:
    """Attach a loaded BPF program at `path`+`file_offset` in process `pid`.

    `semaphore_offset` is the file offset of the probe's semaphore (0: none);
    the kernel counts it up in `pid` for as long as the attachment lives.
    """
    stat = os.stat(path)
    event_name = (
        f"recorder_{pid}_{stat.st_dev:x}_{stat.st_ino:x}_{file_offset:x}"
    ).encode()
    perf_fd = libbcc().bpf_attach_uprobe(
        program_fd, _ATTACH_ENTRY, event_name, path.encode(), file_offset,
        pid, semaphore_offset,
    )
    if perf_fd < 0:
        code = ctypes.get_errno() or errno.EINVAL
        ARM.record("attach %s+%#x in pid %d failed: errno %d", path, file_offset,
                   pid, code)
        if code == errno.ESRCH or not os.path.exists(f"/proc/{pid}"):
            raise ArmError(f"process {pid} is gone")
        raise ArmError(
            f"cannot attach to {path}+{file_offset:#x} in process {pid}: "
            f"{os.strerror(code)}"
        )
    ARM.record("attached %s+%#x in pid %d, semaphore at %#x, perf fd %d", path,
               file_offset, pid, semaphore_offset, perf_fd)
    return Attachment(event_name, perf_fd, pid, path, file_offset, semaphore_offset)


def detach(attachment: Attachment) -> None:
    """Detach one probe; the kernel decrements the semaphore it counted.

    libbcc attached through the uprobe PMU, so closing the perf event is the
    whole detach (bpf_detach_uprobe would look for a tracefs event that was
    never created).
    """
    libbcc().bpf_close_perf_event_fd(attachment.perf_fd)
    ARM.record("detached %s+%#x in pid %d", attachment.path,
               attachment.file_offset, attachment.pid)
