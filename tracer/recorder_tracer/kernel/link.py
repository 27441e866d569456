"""The raw bpf(2) commands behind uprobe_multi links, through ctypes.

libbcc 0.26, and the libbpf 1.1 it is built with, predate uprobe_multi links
(Linux 6.6), so kernel/arm.py makes the few calls it needs itself: load a
program, read a program's info, create a link.

Each command reads its own member of `union bpf_attr`
(include/uapi/linux/bpf.h). The structures below are those members written
out field by field, in the kernel's order, with the kernel's types: `__u64`
(`__aligned_u64` for pointers) is `c_uint64`, which ctypes aligns on 8 bytes
as the kernel does. We pass the size of our structure; the kernel copies that
much of the union and zero-fills the rest, so a member may stop after the
last field we use. Pointers travel as integers (`ctypes.addressof`).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
from collections.abc import Sequence

# bpf(2)'s system call number; the C library exports no wrapper for it.
_SYSCALL_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())

# enum bpf_cmd
BPF_PROG_LOAD = 5
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_LINK_CREATE = 28

# enum bpf_prog_type
BPF_PROG_TYPE_KPROBE = 2

# enum bpf_attach_type
BPF_TRACE_UPROBE_MULTI = 48

BPF_OBJ_NAME_LEN = 16


class ProgLoadAttr(ctypes.Structure):
    """`union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type`."""

    _fields_ = [
        ("prog_type", ctypes.c_uint32),        # enum bpf_prog_type
        ("insn_cnt", ctypes.c_uint32),         # instructions, 8 bytes each
        ("insns", ctypes.c_uint64),            # -> struct bpf_insn[insn_cnt]
        ("license", ctypes.c_uint64),          # -> "GPL\0": GPL-only helpers
        ("log_level", ctypes.c_uint32),        # 0: no verifier log
        ("log_size", ctypes.c_uint32),         # size of log_buf
        ("log_buf", ctypes.c_uint64),          # -> char[log_size]
        ("kern_version", ctypes.c_uint32),     # ignored since Linux 5.0
        ("prog_flags", ctypes.c_uint32),       # BPF_F_*: none
        ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("prog_ifindex", ctypes.c_uint32),     # offload device: none
        ("expected_attach_type", ctypes.c_uint32),  # enum bpf_attach_type
    ]


class ObjInfoAttr(ctypes.Structure):
    """`union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD (`attr.info`)."""

    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),           # the object asked about
        ("info_len", ctypes.c_uint32),         # in: our size; out: filled
        ("info", ctypes.c_uint64),             # -> struct bpf_prog_info
    ]


class ProgInfo(ctypes.Structure):
    """`struct bpf_prog_info`, up to `name` (the kernel fills what fits)."""

    _fields_ = [
        ("type", ctypes.c_uint32),             # enum bpf_prog_type
        ("id", ctypes.c_uint32),               # unique while the program lives
        ("tag", ctypes.c_uint8 * 8),           # hash of the instructions as
                                               # loaded, map fds left out
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    ]


class UprobeMultiLinkAttr(ctypes.Structure):
    """`union bpf_attr` for BPF_LINK_CREATE, its `uprobe_multi` member.

    One link puts the program on `cnt` sites of one file. With a `pid`, the
    uprobes are installed in that process only (its thread group, Linux 6.9
    and later: see `uprobe_multi_supported`), and each site's reference
    counter (the USDT semaphore at `ref_ctr_offsets[i]` in the file) is
    raised in that process while the link lives.
    """

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),          # loaded with expected_attach_type
                                               # BPF_TRACE_UPROBE_MULTI
        ("target_fd", ctypes.c_uint32),        # unused: 0
        ("attach_type", ctypes.c_uint32),      # BPF_TRACE_UPROBE_MULTI
        ("flags", ctypes.c_uint32),            # link flags: 0
        # link_create.uprobe_multi, 8-byte aligned at offset 16
        ("path", ctypes.c_uint64),             # -> the file, NUL-terminated
        ("offsets", ctypes.c_uint64),          # -> u64[cnt], file offsets
        ("ref_ctr_offsets", ctypes.c_uint64),  # -> u64[cnt] or 0: semaphores
        ("cookies", ctypes.c_uint64),          # -> u64[cnt] or 0: none
        ("cnt", ctypes.c_uint32),              # sites
        ("uprobe_flags", ctypes.c_uint32),     # BPF_F_UPROBE_MULTI_RETURN: no
        ("pid", ctypes.c_uint32),              # 0: every process
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def bpf(command: int, attr: ctypes.Structure) -> int:
    """bpf(command, &attr, sizeof attr); the result, or OSError with errno."""
    if _SYSCALL_BPF is None:
        raise OSError(errno.ENOSYS, f"bpf(2) number unknown on {platform.machine()}")
    while True:
        result = _libc.syscall(ctypes.c_long(_SYSCALL_BPF), ctypes.c_int(command),
                               ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr)))
        if result >= 0:
            return int(result)
        code = ctypes.get_errno()
        if code != errno.EINTR:
            raise OSError(code, os.strerror(code))


class LoadError(OSError):
    """BPF_PROG_LOAD failed; `log` holds the verifier's last words, if any."""

    def __init__(self, code: int, log: str) -> None:
        super().__init__(code, os.strerror(code))
        self.log = log


def prog_load(prog_type: int, instructions: bytes, license: bytes, name: bytes,
              expected_attach_type: int = 0, kern_version: int = 0) -> int:
    """Load `instructions` (struct bpf_insn, 8 bytes each); a program fd.

    Map references must already be fds (BPF_PSEUDO_MAP_FD), as bcc leaves
    them. On failure the load is repeated with a verifier log for LoadError.
    """
    if len(instructions) % 8:
        raise ValueError("BPF instructions come in 8-byte units")
    code_buffer = ctypes.create_string_buffer(instructions, len(instructions))
    license_buffer = ctypes.create_string_buffer(license)
    attr = ProgLoadAttr(
        prog_type=prog_type,
        insn_cnt=len(instructions) // 8,
        insns=ctypes.addressof(code_buffer),
        license=ctypes.addressof(license_buffer),
        kern_version=kern_version,
        prog_name=name[:BPF_OBJ_NAME_LEN - 1],
        expected_attach_type=expected_attach_type,
    )
    for _ in range(5):      # as libbpf: EAGAIN means try again
        try:
            return bpf(BPF_PROG_LOAD, attr)
        except OSError as error:
            if error.errno != errno.EAGAIN:
                code = error.errno or errno.EINVAL
                break
    else:
        code = errno.EAGAIN
    log = ctypes.create_string_buffer(1 << 20)
    attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ctypes.addressof(log)
    try:
        fd = bpf(BPF_PROG_LOAD, attr)
    except OSError:
        raise LoadError(code, log.value.decode(errors="replace")[-2000:]) from None
    return fd        # it loaded the second time: keep it


def prog_info(fd: int) -> ProgInfo:
    """The kernel's description of the program behind `fd`."""
    info = ProgInfo()
    attr = ObjInfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info),
                       info=ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return info


def prog_info_u64s(fd: int, offsets: dict[str, int]) -> dict[str, int]:
    """The 64-bit fields of the program's `struct bpf_prog_info` at
    `offsets` (name -> byte offset, from BTF: kernel/arm.py prog_counts);
    a field past what this kernel fills is 0."""
    buffer = ctypes.create_string_buffer(max(offsets.values(), default=0) + 8)
    attr = ObjInfoAttr(bpf_fd=fd, info_len=len(buffer), info=ctypes.addressof(buffer))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return {name: int.from_bytes(buffer.raw[offset:offset + 8], "little")
            if offset + 8 <= attr.info_len else 0
            for name, offset in offsets.items()}


def uprobe_multi_link(prog_fd: int, path: str, offsets: Sequence[int],
                      ref_ctr_offsets: Sequence[int] | None, pid: int) -> int:
    """Attach `prog_fd` at `offsets` of `path` in process `pid` (0: all).

    `ref_ctr_offsets` (one per site, or None) are the file offsets of the
    sites' semaphores. Returns the link's fd; closing it detaches, and the
    kernel lowers the semaphores again.
    """
    count = len(offsets)
    path_buffer = ctypes.create_string_buffer(os.fsencode(path))
    offset_array = (ctypes.c_uint64 * count)(*offsets)
    counters = None
    if ref_ctr_offsets is not None:
        if len(ref_ctr_offsets) != count:
            raise ValueError("one semaphore offset per site")
        counters = (ctypes.c_uint64 * count)(*ref_ctr_offsets)
    attr = UprobeMultiLinkAttr(
        prog_fd=prog_fd,
        attach_type=BPF_TRACE_UPROBE_MULTI,
        path=ctypes.addressof(path_buffer),
        offsets=ctypes.addressof(offset_array),
        ref_ctr_offsets=ctypes.addressof(counters) if counters is not None else 0,
        cnt=count,
        pid=pid,
    )
    return bpf(BPF_LINK_CREATE, attr)


# `r0 = 0; exit`: the smallest program, for the feature probe.
_RETURN_ZERO = bytes([0xB7, 0, 0, 0, 0, 0, 0, 0,      # BPF_ALU64|BPF_MOV|BPF_K
                      0x95, 0, 0, 0, 0, 0, 0, 0])     # BPF_JMP|BPF_EXIT


@functools.cache
def uprobe_multi_supported() -> bool:
    """Whether this kernel has uprobe_multi links that filter by process.

    The probe libbpf uses: a link on "/" (a directory) fails with EBADF
    once the attach type exists, and with pid -1 it fails earlier, with
    EINVAL, only on kernels that check the pid as a process, not a thread
    (Linux 6.9; 6.6-6.8 fired in the given thread alone).
    """
    try:
        prog_fd = prog_load(BPF_PROG_TYPE_KPROBE, _RETURN_ZERO, b"GPL", b"probe_multi",
                            BPF_TRACE_UPROBE_MULTI)
    except OSError:
        return False
    try:
        for pid, expected in ((0, errno.EBADF), (-1 & 0xFFFFFFFF, errno.EINVAL)):
            try:
                os.close(uprobe_multi_link(prog_fd, "/", [0], None, pid))
            except OSError as error:
                if error.errno != expected:
                    return False
            else:
                return False
        return True
    finally:
        os.close(prog_fd)
