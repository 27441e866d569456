"""Member offsets of kernel structs, from the running kernel's BTF.

bcc compiles against the installed kernel headers, which need not match the
running kernel (here: 6.1 headers, a 6.18 kernel), so a BPF program that
reads `task->signal` through them reads the wrong bytes. The few kernel
fields kernel/bpf/snapshot.c reads are located here, in
/sys/kernel/btf/vmlinux, and passed to it as -D offsets.

Parsing the whole BTF takes ~0.15 s here (seconds under emulation) at
every controller start, for a dozen answers that change only with the
kernel: answers are kept beside the compiled programs
(kernel/program_cache.py's directory), per kernel build.

>>> member_offset("task_struct", "tgid") > 0
True
"""

from __future__ import annotations

import functools
import json
import os
import struct

from recorder_tracer.errors import TracerError

VMLINUX = "/sys/kernel/btf/vmlinux"
_HEADER = struct.Struct("<HBBIIIII")    # magic, version, flags, hdr_len,
                                        # type_off, type_len, str_off, str_len
_TYPE = struct.Struct("<III")           # name_off, info, size/type
KIND_STRUCT, KIND_UNION = 4, 5
# Bytes after the 12-byte type header, per kind: fixed + per vlen item.
_EXTRA = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8),
          14: (4, 0), 15: (0, 12), 17: (4, 0), 19: (0, 12)}


@functools.cache
def _types() -> tuple[list[tuple[int, int, int, bytes, int, int]], bytes]:
    """(kind, vlen, size_or_type, members blob, kind_flag, name) per type id, and
    the string section."""
    try:
        with open(VMLINUX, "rb") as file:
            data = file.read()
    except OSError as error:
        raise TracerError(f"cannot read the kernel's BTF ({VMLINUX}): "
                          f"{error.strerror}") from None
    magic, _v, _f, header_len, type_off, type_len, str_off, str_len = (
        _HEADER.unpack_from(data))
    if magic != 0xEB9F:
        raise TracerError(f"{VMLINUX}: not BTF")
    types_start = header_len + type_off
    strings = data[header_len + str_off:header_len + str_off + str_len]
    types: list[tuple[int, int, int, bytes, int, int]] = [(0, 0, 0, b"", 0, 0)]
    offset, end = types_start, types_start + type_len
    while offset < end:
        name_off, info, size = _TYPE.unpack_from(data, offset)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        fixed, each = _EXTRA.get(kind, (0, 0))
        extra = fixed + each * vlen
        blob = data[offset + 12:offset + 12 + extra]
        types.append((kind, vlen, size, blob, (info >> 31) & 1, name_off))
        offset += 12 + extra
    return types, strings


def _name(strings: bytes, offset: int) -> str:
    return strings[offset:strings.index(b"\0", offset)].decode()


def _find(types: list, strings: bytes, struct_name: str) -> int:
    for type_id, (kind, vlen, _size, _blob, _flag, name_off) in enumerate(types):
        if kind == KIND_STRUCT and vlen and _name(strings, name_off) == struct_name:
            return type_id
    raise TracerError(f"kernel BTF has no struct {struct_name}")


def _member(types: list, strings: bytes, type_id: int, member: str) -> int | None:
    _kind, vlen, _size, blob, flag, _name_off = types[type_id]
    for index in range(vlen):
        name_off, member_type, bits = struct.unpack_from("<III", blob, index * 12)
        bit_offset = bits & 0xFFFFFF if flag else bits
        if name_off and _name(strings, name_off) == member:
            return bit_offset // 8
        if not name_off and types[member_type][0] in (KIND_STRUCT, KIND_UNION):
            inner = _member(types, strings, member_type, member)
            if inner is not None:
                return bit_offset // 8 + inner
    return None


def _kept_answers_name() -> str:
    """The answers file of this kernel build (release, version, BTF size)."""
    uname = os.uname()
    size = os.stat(VMLINUX).st_size
    tag = f"{uname.release}-{uname.version}-{size}".encode().hex()[:200]
    return f"btf-{tag}.json"


def _kept(question: str, answer: object = None) -> int | None:
    """The kept answer to `question`, or keep `answer`; None when there is
    none or no cache (any failure only means parsing the BTF again)."""
    from recorder_tracer.kernel import program_cache
    from recorder_tracer.output.safe_write import write_new_file
    directory = program_cache.cache_dir()
    if directory is None:
        return None
    try:
        name = _kept_answers_name()
        answers = program_cache.read_json(directory, name)
        answers = answers if isinstance(answers, dict) else {}
        if answer is None:
            kept = answers.get(question)
            return kept if isinstance(kept, int) else None
        answers[question] = answer
        write_new_file(directory, name, json.dumps(answers).encode(), sync=False)
    except (OSError, TracerError, ValueError):
        pass
    return None


@functools.cache
def member_offset(struct_name: str, member: str) -> int:
    """Byte offset of `member` in kernel `struct struct_name` (anonymous
    inner structs and unions are searched)."""
    question = f"member {struct_name}.{member}"
    kept = _kept(question)
    if kept is not None:
        return kept
    offset = _member_offset(struct_name, member)
    _kept(question, offset)
    return offset


def _member_offset(struct_name: str, member: str) -> int:
    types, strings = _types()
    offset = _member(types, strings, _find(types, strings, struct_name), member)
    if offset is None:
        raise TracerError(f"kernel BTF: struct {struct_name} has no {member}")
    return offset


KIND_PTR, KIND_TYPEDEF, KIND_FUNC_PROTO = 2, 8, 13


@functools.cache
def tracepoint_arguments(tracepoint: str) -> int:
    """How many arguments the kernel passes to raw tracepoint `tracepoint`
    (its `btf_trace_<name>` prototype, less the context pointer): tells
    kernels apart where a tracepoint changed place and arguments."""
    question = f"tracepoint {tracepoint}"
    kept = _kept(question)
    if kept is not None:
        return kept
    count = _tracepoint_arguments(tracepoint)
    _kept(question, count)
    return count


def _tracepoint_arguments(tracepoint: str) -> int:
    types, strings = _types()
    wanted = f"btf_trace_{tracepoint}"
    for kind, _vlen, target, _blob, _flag, name_off in types:
        if kind == KIND_TYPEDEF and _name(strings, name_off) == wanted:
            pointer = types[target]
            if pointer[0] == KIND_PTR and types[pointer[2]][0] == KIND_FUNC_PROTO:
                return types[pointer[2]][1] - 1
    raise TracerError(f"kernel BTF has no tracepoint {tracepoint}")
