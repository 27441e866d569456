"""Arm recorder probes per PID: uprobes with the topic's semaphore.

Two ways to put a loaded BPF program on a probe site of one process:

- **A uprobe_multi BPF link** (Linux 6.6, with process filtering 6.9),
  used when the kernel has it. `BPF_LINK_CREATE` takes the file, the site's
  offset, its semaphore's offset (`ref_ctr_offsets`) and the pid
  (kernel/link.py makes the raw calls). A hit then runs the program straight
  from the uprobe, without the perf event layer: 17 to 46 ns less per
  record here (bench/README.md). Such a link needs the program loaded with
  `expected_attach_type` BPF_TRACE_UPROBE_MULTI, and bcc loads it with 0, so
  we load a copy: the instructions bcc compiled (its map fds already in
  them), read from bcc's module, go to `BPF_PROG_LOAD` with that attach
  type. One copy serves every link of the same program, and is closed with
  its last link.
- **A perf event** (the fallback): libbcc's `bpf_attach_uprobe`. bcc 0.26's
  Python binding calls it with 6 of its 7 arguments (the 7th,
  `ref_ctr_offset`, is then stack garbage) and refuses a semaphore probe
  without a PID, so we call it through a correct 7-argument prototype, on
  our own ctypes handle so bcc's stays untouched. Used when the kernel lacks
  process-filtered uprobe_multi links, when the program cannot be copied
  (not a bcc kprobe program, or the copy fails to load), when link creation
  fails with EINVAL or EOPNOTSUPP, and when `RECORDER_NO_UPROBE_MULTI=1`.

Either way the kernel is handed the file as /proc/self/fd/N, an O_PATH
descriptor opened once and checked to be the inode the probe was read
from (the mapping's device and inode): a process that renames another
file over the mapped path between our check and the attach cannot move
the probe (or its semaphore's increment, which with pid -1 would land in
every process mapping the other file) onto that file. When the path no
longer names the inode at all, the mapping's /proc/PID/map_files entry
does.

Either way the kernel increments the topic's semaphore in that one process
while the probe is attached, and decrements it on detach: arming topic A in
process P costs nothing to P's other topics or to other processes, and
other tools (bpftrace) can attach to the same sites meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import enum
import errno
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, NoReturn

from recorder_tracer.errors import TracerError
from recorder_tracer.kernel import link
from recorder_tracer.kernel.btf import member_offset
from recorder_tracer.selftrace import ARM
from recorder_tracer.target import safe_open
from recorder_tracer.target.memory import read_maps

_ATTACH_ENTRY = 0   # enum bpf_probe_attach_type: BPF_PROBE_ENTRY
NO_UPROBE_MULTI = "RECORDER_NO_UPROBE_MULTI"    # "1": perf events only


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


class Method(enum.Enum):
    """How an Attachment holds its probe."""

    LINK = "uprobe_multi link"      # fd: a BPF link; closing it detaches
    PERF_EVENT = "perf event"       # fd: libbcc's perf event


@dataclass(frozen=True)
class Attachment:
    """One armed probe site in one process."""

    method: Method
    fd: int                 # the link's fd, or the perf event's
    pid: int
    path: str
    file_offset: int
    semaphore_offset: int
    program_id: int = 0     # LINK: kernel id of the program given to attach


# -- the program's copy for links ---------------------------------------------


@dataclass
class _Copy:
    """A bcc program loaded again with expected_attach_type
    BPF_TRACE_UPROBE_MULTI, for links. It lives while links use it: a copy
    costs ~3 ms to make, and a lingering one would keep the maps of a
    closed bcc program (rings of megabytes) alive."""

    fd: int
    source_id: int          # kernel id of bcc's program
    links: int = 0          # live attachments using it


_lock = threading.Lock()
_copies: dict[int, _Copy] = {}          # by source id
_no_copy: set[int] = set()              # source ids links cannot carry
_released_misses: dict[int, int] = {}   # source id -> recursion misses of
                                        # its copies closed (links gone)
_live: dict[int, Attachment] = {}       # by fd: attached, not yet detached


def links_enabled(pid: int) -> bool:
    """Whether attaching to `pid` tries a uprobe_multi link first."""
    if os.environ.get(NO_UPROBE_MULTI, "") not in ("", "0"):
        return False
    # -1 is every process (0 for a link); 0 or other negatives mean
    # something else to perf_event_open, which keeps them.
    return (pid > 0 or pid == -1) and link.uprobe_multi_supported()


_bcc_programs: dict[int, tuple[Any, Any]] = {}   # fd -> (bcc.BPF, function)


def register_bcc_program(bpf: Any, function: Any) -> int:
    """Let links carry `function`, a program bcc loaded (BPF.load_func):
    its instructions are then reloaded for uprobe_multi links. Returns its
    fd. A program not registered is attached through perf events."""
    _bcc_programs[function.fd] = (bpf, function)
    return int(function.fd)


def forget_bcc_program(program_fd: int) -> None:
    """The program is about to be closed: stop copying it for links (its fd
    number may be reused by another program)."""
    _bcc_programs.pop(program_fd, None)
    with contextlib.suppress(OSError), _lock:
        _released_misses.pop(link.prog_info(program_fd).id, None)


# bpf_prog_info's run statistics: run_cnt and run_time_ns count while
# stats are enabled (BPF_ENABLE_STATS, kernel.bpf_stats_enabled);
# recursion_misses always.
PROG_COUNTS = ("run_time_ns", "run_cnt", "recursion_misses")


def prog_counts(fd: int) -> dict[str, int]:
    """The run statistics (PROG_COUNTS) of the program behind `fd`, read
    at the offsets the kernel's BTF gives; a field this kernel lacks is 0."""
    offsets = {}
    for name in PROG_COUNTS:
        try:
            offsets[name] = member_offset("bpf_prog_info", name)
        except (TracerError, OSError):
            continue
    counts = link.prog_info_u64s(fd, offsets)
    return {name: counts.get(name, 0) for name in PROG_COUNTS}


def copy_fd(program_fd: int) -> int | None:
    """The fd of the copy of `program_fd` that links run now, if any."""
    with _lock:
        copy = _copies.get(link.prog_info(program_fd).id)
        return copy.fd if copy is not None else None


def _misses(fd: int) -> int:
    return prog_counts(fd)["recursion_misses"]


def recursion_misses(program_fd: int) -> int:
    """Runs the kernel skipped (the program already running on that CPU)
    of `program_fd` and of every copy links ran of it."""
    with _lock:
        source_id = link.prog_info(program_fd).id
        misses = _misses(program_fd) + _released_misses.get(source_id, 0)
        copy = _copies.get(source_id)
        if copy is not None:
            misses += _misses(copy.fd)
        return misses


def _bcc_source(program_fd: int) -> tuple[bytes, bytes, int] | None:
    """The instructions, license and kernel version bcc loaded as
    `program_fd`, if it was registered."""
    registered = _bcc_programs.get(program_fd)
    if registered is None:
        return None
    bpf, function = registered
    if hasattr(bpf, "function_source"):     # kernel/program_cache.CachedBPF
        return bpf.function_source(function.name)
    lib = sys.modules["bcc"].libbcc.lib
    module, name = bpf.module, function.name
    if not module:
        return None
    start = lib.bpf_function_start(module, name)
    size = lib.bpf_function_size(module, name)
    if not start or not size:
        return None
    return (ctypes.string_at(start, size), lib.bpf_module_license(module),
            lib.bpf_module_kern_version(module))


def _copy_for(program_fd: int) -> _Copy | None:
    """The link-ready copy of `program_fd`, loaded unless one lives; None
    when links cannot carry this program. Called with _lock held."""
    info = link.prog_info(program_fd)
    if info.id in _no_copy:
        return None
    if info.id in _copies:
        return _copies[info.id]
    source = (_bcc_source(program_fd)
              if info.type == link.BPF_PROG_TYPE_KPROBE else None)
    if source is None:
        ARM.record("program %d is no bcc kprobe program: perf events", info.id)
        _no_copy.add(info.id)       # ids are not reused: this set stays small
        return None
    instructions, license, kern_version = source
    try:
        fd = link.prog_load(link.BPF_PROG_TYPE_KPROBE, instructions, license,
                            info.name, link.BPF_TRACE_UPROBE_MULTI, kern_version)
    except OSError as error:
        ARM.record("program %d not loaded for links (errno %d): perf events",
                   info.id, error.errno or 0)
        _no_copy.add(info.id)
        return None
    # The same instructions, maps left out: the kernel's tags must agree.
    if bytes(link.prog_info(fd).tag) != bytes(info.tag):
        os.close(fd)
        ARM.record("program %d: its copy differs, perf events", info.id)
        _no_copy.add(info.id)
        return None
    ARM.record("program %d loaded for links as fd %d", info.id, fd)
    _copies[info.id] = _Copy(fd, info.id)
    return _copies[info.id]


def _release(source_id: int) -> None:
    """One link fewer on the copy of `source_id`; the last one closes it.
    Called with _lock held."""
    copy = _copies[source_id]
    copy.links -= 1
    if copy.links == 0:
        with contextlib.suppress(OSError):  # its runs skipped stay counted
            _released_misses[source_id] = (_released_misses.get(source_id, 0)
                                           + _misses(copy.fd))
        os.close(copy.fd)
        del _copies[source_id]


# -- attach and detach --------------------------------------------------------


def attach_uprobe(
    program_fd: int,
    path: str,
    file_offset: int,
    pid: int,
    semaphore_offset: int = 0,
    identity: tuple[int, int] | None = None,
    mapped_by: int = 0,
) -> Attachment:
    """Attach a loaded BPF program at `path`+`file_offset` in process `pid`.

    `semaphore_offset` is the file offset of the probe's semaphore (0: none);
    the kernel counts it up in `pid` for as long as the attachment lives.
    `identity` is the (device, inode) the probe's offsets were read from:
    the probe goes on that file or nowhere (ArmError). If `path` names
    another file by now, the file process `mapped_by` (default `pid`) maps
    with that identity is used.
    """
    target = _open_target(path, file_offset, pid, identity, mapped_by or pid)
    try:
        # The kernel resolves this to the inode `target` holds, not to
        # whatever `path` names by the time it looks.
        kernel_path = f"/proc/self/fd/{target}"
        attachment = None
        if links_enabled(pid):
            attachment = _attach_link(program_fd, kernel_path, path, file_offset,
                                      pid, semaphore_offset)
        if attachment is None:
            attachment = _attach_perf_event(program_fd, target, path, file_offset,
                                            pid, semaphore_offset)
    finally:
        os.close(target)
    with _lock:
        _live[attachment.fd] = attachment
    ARM.record("attached %s+%#x in pid %d, semaphore at %#x, %s fd %d", path,
               file_offset, pid, semaphore_offset, attachment.method.value,
               attachment.fd)
    return attachment


def _open_target(path: str, file_offset: int, pid: int,
                 identity: tuple[int, int] | None, mapped_by: int) -> int:
    """An O_PATH descriptor of the file to attach to: `path` if it is
    `identity`, else process `mapped_by`'s mapping of `identity`."""
    try:
        return safe_open.pin_identified(path, identity)
    except OSError as error:
        first = error
    if identity is not None and mapped_by > 0:
        try:
            mappings = read_maps(mapped_by)
        except OSError:
            mappings = []
        for mapping in mappings:
            if (mapping.device, mapping.inode) != identity:
                continue
            try:
                return safe_open.pin_identified(
                    f"/proc/{mapped_by}/map_files/{mapping.start:x}-{mapping.end:x}",
                    identity)
            except OSError:
                continue
    if isinstance(first, safe_open.UntrustedFileError):
        ARM.record("attach %s+%#x in pid %d refused: %s", path, file_offset, pid,
                   str(first))
        raise ArmError(f"cannot attach to {path}+{file_offset:#x} in process "
                       f"{pid}: {first}") from None
    _fail(first.errno or errno.ENOENT, path, file_offset, pid)


def _attach_link(program_fd: int, kernel_path: str, path: str, file_offset: int,
                 pid: int, semaphore_offset: int) -> Attachment | None:
    """Through a uprobe_multi link; None: use a perf event instead."""
    with _lock:
        try:
            copy = _copy_for(program_fd)
        except OSError as error:        # program_fd is no BPF program
            _fail(error.errno or errno.EBADF, path, file_offset, pid)
        if copy is None:
            return None
        copy.links += 1
    try:
        fd = link.uprobe_multi_link(
            copy.fd, kernel_path, [file_offset],
            [semaphore_offset] if semaphore_offset else None, max(pid, 0))
    except OSError as error:
        with _lock:
            _release(copy.source_id)
        code = error.errno or errno.EINVAL
        if code in (errno.EINVAL, errno.EOPNOTSUPP):
            ARM.record("link on %s+%#x in pid %d refused (errno %d): perf event",
                       path, file_offset, pid, code)
            return None
        _fail(code, path, file_offset, pid)
    return Attachment(Method.LINK, fd, pid, path, file_offset, semaphore_offset,
                      copy.source_id)


def _attach_perf_event(program_fd: int, target: int, path: str, file_offset: int,
                       pid: int, semaphore_offset: int) -> Attachment:
    """Through libbcc: a uprobe perf event with the BPF program on it."""
    stat = os.fstat(target)
    event_name = (
        f"recorder_{pid}_{stat.st_dev:x}_{stat.st_ino:x}_{file_offset:x}"
    ).encode()
    perf_fd = libbcc().bpf_attach_uprobe(
        program_fd, _ATTACH_ENTRY, event_name, f"/proc/self/fd/{target}".encode(),
        file_offset, pid, semaphore_offset,
    )
    if perf_fd < 0:
        _fail(ctypes.get_errno() or errno.EINVAL, path, file_offset, pid)
    return Attachment(Method.PERF_EVENT, perf_fd, pid, path, file_offset,
                      semaphore_offset)


def _fail(code: int, path: str, file_offset: int, pid: int) -> NoReturn:
    ARM.record("attach %s+%#x in pid %d failed: errno %d", path, file_offset,
               pid, code)
    if code == errno.ESRCH or (pid > 0 and not os.path.exists(f"/proc/{pid}")):
        raise ArmError(f"process {pid} is gone")
    raise ArmError(
        f"cannot attach to {path}+{file_offset:#x} in process {pid}: "
        f"{os.strerror(code)}"
    )


def detach(attachment: Attachment) -> None:
    """Detach one probe; the kernel decrements the semaphore it counted.

    A link is closed. libbcc attached a perf event through the uprobe PMU,
    so closing it is the whole detach (bpf_detach_uprobe would look for a
    tracefs event that was never created). Detaching twice does nothing:
    the fd, maybe reused by then, is not closed again.
    """
    with _lock:
        if _live.get(attachment.fd) is not attachment:
            return
        del _live[attachment.fd]
        if attachment.method is Method.LINK:
            os.close(attachment.fd)
            _release(attachment.program_id)
        else:
            libbcc().bpf_close_perf_event_fd(attachment.fd)
    ARM.record("detached %s %s+%#x in pid %d", attachment.method.value,
               attachment.path, attachment.file_offset, attachment.pid)
