"""The one loader of the tracer's BPF programs (kernel/bpf/*.c) through bcc.

Compile with the probe contract's headers and ours, load a function and
register its fd for kernel/arm.py, read the per-CPU counters every program
keeps in a `counters` array, turn a compiled record type into a `struct`
layout, and unload. The harvest (kernel/harvest.py), the USDT program
(kernel/usdt.py) and the crash capture (postmortem/snapshot.py) all load
here.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from recorder_tracer.errors import TracerError
from recorder_tracer.kernel.arm import forget_bcc_program, register_bcc_program

BPF_DIR = Path(__file__).resolve().parent / "bpf"
# The probe contract's headers (recorder/entry.h, registry.h) the programs
# include: a wheel carries a copy next to bpf/ (setup.py's build_py copies
# probes/include/recorder); a checkout (editable install too) has the
# originals in probes/include.
INSTALLED_INCLUDE = Path(__file__).resolve().parent / "include"
CHECKOUT_INCLUDE = Path(__file__).resolve().parents[3] / "probes" / "include"
PROBES_INCLUDE = (INSTALLED_INCLUDE if (INSTALLED_INCLUDE / "recorder").is_dir()
                  else CHECKOUT_INCLUDE)


def require_bpf() -> Any:
    """Import bcc, or fail with the fix; also checks for root."""
    if os.geteuid() != 0:
        raise TracerError("must run as root (BPF and uprobes need it)")
    try:
        import bcc
    except ImportError:
        raise TracerError(
            "bcc is not available to this Python: install Debian's python3-bpfcc "
            "and run recorder with /usr/bin/python3 (or a venv of it made with "
            "--system-site-packages); pyenv and uv Pythons do not see it"
        ) from None
    return bcc


def possible_cpus() -> int:
    """How many CPU ids the kernel may use (per-CPU maps are that long)."""
    from bcc.utils import get_possible_cpus
    return max(get_possible_cpus()) + 1


def load_program(source: str, cflags: Sequence[str], what: str,
                 contract: bool = True) -> Any:
    """Compile and load kernel/bpf/`source` (a bcc.BPF); `what` names the
    program in the one-line error. `contract`: it includes the probe
    contract's headers (probes/include), which must then be there."""
    require_bpf()
    if contract:
        for header in ("entry.h", "registry.h"):
            if not (PROBES_INCLUDE / "recorder" / header).is_file():
                raise TracerError(f"probe contract header recorder/{header} "
                                  f"missing in {PROBES_INCLUDE}: reinstall recorder")
    flags = [f"-I{PROBES_INCLUDE}", f"-I{BPF_DIR}", *cflags]
    from recorder_tracer.kernel import program_cache  # imports bcc
    try:
        return program_cache.load_cached(program_sources(), BPF_DIR / source, flags)
    except Exception as error:
        headers = Path(f"/lib/modules/{os.uname().release}/build")
        if not headers.exists():
            raise TracerError(f"kernel headers missing ({headers}): install "
                              "Debian's linux-headers-$(uname -r) (in a "
                              "checkout: `sudo vagrant/provision.sh`)") from None
        raise TracerError(f"cannot load the BPF {what} program: {error}") from None


def program_sources() -> list[Path]:
    """Every file a program may include from here: what its compiled
    form depends on besides its flags (kernel/program_cache.py)."""
    return sorted([*BPF_DIR.glob("*.[ch]"),
                   *(PROBES_INCLUDE / "recorder").glob("*.h")])


def load_function(bpf: Any, name: bytes, kind: str = "KPROBE") -> int:
    """Load function `name` of `bpf` (a uprobe by default; `kind` names a
    bcc.BPF program type) and register its fd for kernel/arm.py."""
    import bcc
    try:
        function = bpf.load_func(name, getattr(bcc.BPF, kind))
    except Exception as error:
        raise TracerError(f"cannot load BPF function {name.decode()}: "
                          f"{error}") from None
    return register_bcc_program(bpf, function)


def unload(bpf: Any, program_fds: Iterable[int] = ()) -> None:
    """Forget the registered functions, then free the programs and maps."""
    for fd in program_fds:
        forget_bcc_program(fd)
    bpf.cleanup()


def read_counters(bpf: Any, names: Sequence[str]) -> list[dict[str, int]]:
    """Per CPU, the program's `counters` per-CPU array (indexed by the
    counter enum of its C header), each value named by `names`."""
    table = bpf[b"counters"]
    per_counter = [list(table[ctypes.c_int(index)]) for index in range(len(names))]
    return [{name: values[cpu] for name, values in zip(names, per_counter,
                                                      strict=True)}
            for cpu in range(len(per_counter[0]))]


def struct_format(ctype: Any) -> str:
    """A `struct` format for a ctypes Structure, flattened in field order,
    with the padding its offsets imply: the compiled layout decides, so the
    format cannot drift from the C header.

    >>> class Pair(ctypes.Structure):
    ...     _fields_ = [("a", ctypes.c_uint8), ("b", ctypes.c_uint32)]
    >>> struct_format(Pair)
    'B3xI'
    """
    return "".join(code for code, _ in _layout(ctype, ""))


def struct_fields(ctype: Any) -> list[str]:
    """The names of the values `struct_format(ctype)` unpacks, in order:
    nested fields dotted, array elements indexed.

    >>> class Pair(ctypes.Structure):
    ...     _fields_ = [("a", ctypes.c_uint8), ("b", ctypes.c_uint32 * 2)]
    >>> struct_fields(Pair)
    ['a', 'b[0]', 'b[1]']
    """
    return [name for _, name in _layout(ctype, "") if name]


def _layout(ctype: Any, prefix: str) -> list[tuple[str, str]]:
    """(format code, value name or "" for padding) for a Structure."""
    parts: list[tuple[str, str]] = []
    position = 0
    for name, field_type, *_ in ctype._fields_:
        offset = getattr(ctype, name).offset
        if offset > position:
            parts.append((f"{offset - position}x", ""))
        parts.extend(_field_layout(field_type, prefix + name))
        position = offset + ctypes.sizeof(field_type)
    if ctypes.sizeof(ctype) > position:
        parts.append((f"{ctypes.sizeof(ctype) - position}x", ""))
    return parts


def _field_layout(field_type: Any, name: str) -> list[tuple[str, str]]:
    if issubclass(field_type, ctypes.Array):
        element = field_type._type_
        if element in (ctypes.c_char, ctypes.c_byte, ctypes.c_ubyte):
            return [(f"{field_type._length_}s", name)]
        return [part for index in range(field_type._length_)
                for part in _field_layout(element, f"{name}[{index}]")]
    if issubclass(field_type, ctypes.Structure):
        return _layout(field_type, name + ".")
    code = getattr(field_type, "_type_", None)
    if not isinstance(code, str) or struct.calcsize(code) != ctypes.sizeof(field_type):
        raise TypeError(f"no struct format for {field_type}")
    return [({"l": "q", "L": "Q"}.get(code, code), name)]
