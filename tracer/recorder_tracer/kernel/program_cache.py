"""Compiled BPF programs kept per source, flags, kernel and bcc: clang runs once.

bcc compiles every program from C each time a controller starts: 0.4-2 s
here, several times that under emulation (most of the VM's test time), and
its LLVM is most of a controller's memory. So the first compile of a
(sources, cflags, kernel, bcc) stores what the kernel needs: each function's
instructions and each map's definition as the kernel reports it (type, key
and value sizes, entries, flags), its pin path, the inner map of a
map-in-map. A later load creates the maps (or opens the pinned ones, as
bcc's BPF_TABLE_PINNED does), writes their fds into the instructions that
name them and loads those with BPF_PROG_LOAD: `CachedBPF` answers the part
of bcc's BPF interface the tracer uses (tables, load_func, attach_*,
ring and perf buffers, cleanup).

The kernel's verifier checks cached instructions as it checks fresh ones;
the cache is a directory root owns and nobody else may write
(RECORDER_BPF_CACHE, default /var/cache/recorder/bpf; empty: no cache), its
files are read with O_NOFOLLOW and a size bound, and an entry that does not
parse, or any program it cannot describe, is simply compiled.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import hashlib
import json
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bcc
from bcc import table as bcc_table
from bcc.libbcc import lib

from recorder_tracer.kernel import link
from recorder_tracer.kernel.pins import ObjPinAttr, pin
from recorder_tracer.output.safe_write import private_dir, write_new_file
from recorder_tracer.selftrace import ARM

CACHE_FORMAT = 1
DEFAULT_CACHE_DIR = "/var/cache/recorder/bpf"
ENTRY_MAX_BYTES = 32 << 20

BPF_MAP_CREATE = 0
BPF_OBJ_GET = 7
BPF_LD_IMM64 = 0x18
BPF_PSEUDO_MAP_FD = 1
MAP_IN_MAP_TYPES = (12, 13)         # BPF_MAP_TYPE_ARRAY_OF_MAPS, HASH_OF_MAPS
# bcc's table class per map type (bcc.table.Table asks the compiled module).
TABLE_CLASSES: dict[int, Any] = {
    1: bcc_table.HashTable, 2: bcc_table.Array, 3: bcc_table.ProgArray,
    4: bcc_table.PerfEventArray, 5: bcc_table.PerCpuHash,
    6: bcc_table.PerCpuArray, 8: bcc_table.CgroupArray, 9: bcc_table.LruHash,
    10: bcc_table.LruPerCpuHash,
    12: bcc_table.MapInMapArray, 13: bcc_table.MapInMapHash,
    27: bcc_table.RingBuf,
}
AUTOLOAD_RAW_TRACEPOINT = b"raw_tracepoint__"
OTHER_AUTOLOADS = (b"kprobe__", b"kretprobe__", b"tracepoint__", b"kfunc__",
                   b"kretfunc__", b"lsm__")
PIN_DIR_FLAG = re.compile(r'-D\w+_PIN_DIR="([^"]+)"')
MAP_IN_MAP_DECLARATION = re.compile(
    r'BPF_(?:ARRAY|HASH)_OF_MAPS\(\s*(\w+)\s*,\s*"(\w+)"')

lib.bpf_num_tables.restype = ctypes.c_ulonglong
lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
lib.bpf_table_name.restype = ctypes.c_char_p
lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong]


class MapCreateAttr(ctypes.Structure):
    """`union bpf_attr` for BPF_MAP_CREATE, up to `map_name`."""

    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),     # map-in-map: its template
        ("numa_node", ctypes.c_uint32),        # only with BPF_F_NUMA_NODE
        ("map_name", ctypes.c_char * link.BPF_OBJ_NAME_LEN),
    ]


class MapInfo(ctypes.Structure):
    """`struct bpf_map_info`, up to `name`."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * link.BPF_OBJ_NAME_LEN),
    ]


def map_info(fd: int) -> MapInfo:
    """The kernel's description of the map behind `fd`."""
    info = MapInfo()
    attr = link.ObjInfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info),
                            info=ctypes.addressof(info))
    link.bpf(link.BPF_OBJ_GET_INFO_BY_FD, attr)
    return info


def open_pinned(path: str) -> int:
    """An fd of the BPF object pinned at `path` (OSError if none)."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    return link.bpf(BPF_OBJ_GET, ObjPinAttr(pathname=ctypes.addressof(name)))


def cache_dir() -> Path | None:
    """Where compiled programs are kept; None when caching is off."""
    configured = os.environ.get("RECORDER_BPF_CACHE", DEFAULT_CACHE_DIR)
    return Path(configured) if configured else None


def cache_key(main_source: Path, sources: Sequence[Path],
              cflags: Sequence[str]) -> str:
    """What a compiled program depends on: its source, every file it may
    include, its flags, the kernel (release and build) and its headers, bcc."""
    digest = hashlib.sha256(f"{CACHE_FORMAT}\0{bcc.__version__}\0"
                            f"{main_source.name}\0".encode())
    uname = os.uname()
    headers = Path(f"/lib/modules/{uname.release}/build")
    digest.update(f"{uname.release}\0{uname.version}\0{headers.resolve()}\0"
                  .encode())
    for flag in cflags:
        digest.update(flag.encode() + b"\0")
    for source in sources:
        digest.update(str(source).encode() + b"\0" + source.read_bytes() + b"\0")
    return digest.hexdigest()[:32]


def read_json(directory: Path, name: str) -> Any:
    """The JSON file `name` of the cache directory; None if missing, not
    ours, not a regular file or too large. ValueError if it does not parse."""
    try:
        folder = private_dir(directory)
    except Exception as error:     # a directory we may not use: compile
        ARM.record("bpf cache %s unusable: %s", str(directory), str(error))
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NONBLOCK, dir_fd=folder)
    except OSError:
        return None
    finally:
        os.close(folder)
    try:
        info = os.fstat(fd)
        if (not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid()
                or info.st_size > ENTRY_MAX_BYTES):
            return None
        with os.fdopen(fd, "rb", closefd=False) as file:
            return json.loads(file.read(ENTRY_MAX_BYTES + 1))
    except RecursionError:
        raise ValueError("nested too deep") from None
    finally:
        os.close(fd)


def read_entry(directory: Path, key: str) -> dict[str, Any] | None:
    """The stored entry `key`, or None: missing, not ours, too large, or
    not what store_entry writes."""
    try:
        entry = read_json(directory, f"{key}.json")
    except (OSError, ValueError):
        return None
    return entry if _well_formed(entry, key) else None


def _well_formed(entry: Any, key: str) -> bool:
    """Every field load_entry uses, of the type it uses."""
    try:
        assert entry["format"] == CACHE_FORMAT and entry["key"] == key
        assert isinstance(entry["license"], str)
        assert isinstance(entry["kern_version"], int)
        for function in entry["functions"]:
            assert isinstance(function["name"], str)
            assert isinstance(function["code"], str)
            assert all(isinstance(index, int) and isinstance(name, str)
                       for index, name in function["maps"])
        for table in entry["tables"]:
            assert isinstance(table["name"], str)
            for field in ("type", "key_size", "value_size", "max_entries",
                          "flags"):
                assert isinstance(table[field], int)
            for field in ("pin", "inner", "key_desc", "leaf_desc"):
                assert table[field] is None or isinstance(table[field], str)
    except (AssertionError, KeyError, TypeError):
        return False
    return True


def describe(compiled: Any, key: str, source_text: str,
             cflags: Sequence[str]) -> dict[str, Any] | None:
    """What store_entry keeps of a program bcc just compiled; None if it
    uses what a cached load cannot redo (other autoloads, map types, map
    references)."""
    module = compiled.module
    pin_dirs = PIN_DIR_FLAG.findall(" ".join(cflags))
    inners = dict(MAP_IN_MAP_DECLARATION.findall(source_text))
    tables, by_fd = [], {}
    for index in range(lib.bpf_num_tables(module)):
        name = lib.bpf_table_name(module, index)
        fd = lib.bpf_table_fd(module, name)
        info = map_info(fd)
        if info.type not in TABLE_CLASSES:
            return None
        inner = inners.get(name.decode()) if info.type in MAP_IN_MAP_TYPES else None
        if info.type in MAP_IN_MAP_TYPES and inner is None:
            return None
        key_desc = lib.bpf_table_key_desc(module, name)
        leaf_desc = lib.bpf_table_leaf_desc(module, name)
        tables.append({
            "name": name.decode(), "type": info.type, "key_size": info.key_size,
            "value_size": info.value_size, "max_entries": info.max_entries,
            "flags": info.map_flags, "pin": _pin_of(name.decode(), info.id, pin_dirs),
            "inner": inner,
            "key_desc": key_desc.decode() if key_desc else None,
            "leaf_desc": leaf_desc.decode() if leaf_desc else None})
        by_fd[fd] = name.decode()
    functions = []
    for index in range(lib.bpf_num_functions(module)):
        name = lib.bpf_function_name(module, index)
        if name.startswith(OTHER_AUTOLOADS):
            return None
        code = ctypes.string_at(lib.bpf_function_start(module, name),
                                lib.bpf_function_size(module, name))
        references = _map_references(code, by_fd)
        if references is None:
            return None
        functions.append({"name": name.decode(), "maps": references,
                          "code": base64.b64encode(code).decode()})
    return {"format": CACHE_FORMAT, "key": key, "functions": functions,
            "tables": tables,
            "license": lib.bpf_module_license(module).decode(),
            "kern_version": lib.bpf_module_kern_version(module)}


def _pin_of(name: str, map_id: int, pin_dirs: Sequence[str]) -> str | None:
    """The path in a pin directory of the flags where bcc pinned this map."""
    for directory in pin_dirs:
        path = f"{directory}/{name}"
        try:
            fd = open_pinned(path)
        except OSError:
            continue
        try:
            if map_info(fd).id == map_id:
                return path
        finally:
            os.close(fd)
    return None


def _map_references(code: bytes, by_fd: dict[int, str]) -> list[tuple[int, str]] | None:
    """(instruction index, map name) of every map fd loaded by `code`;
    None if one names a map not in `by_fd`."""
    references = []
    for index in range(0, len(code) // 8):
        opcode, registers = code[index * 8], code[index * 8 + 1]
        if opcode == BPF_LD_IMM64 and registers >> 4 == BPF_PSEUDO_MAP_FD:
            fd = int.from_bytes(code[index * 8 + 4:index * 8 + 8], "little",
                                signed=True)
            if fd not in by_fd:
                return None
            references.append((index, by_fd[fd]))
    return references


def store_entry(directory: Path, entry: dict[str, Any]) -> None:
    """Keep `entry`; a failure (a full disk, a directory not ours) only
    means the next controller compiles too."""
    try:
        write_new_file(directory, f"{entry['key']}.json",
                       json.dumps(entry).encode(), sync=False)
        ARM.record("bpf cache stored %s", entry["key"])
    except Exception as error:
        ARM.record("bpf cache not stored: %s", str(error))


class CachedBPF(bcc.BPF):  # type: ignore[misc]
    """A bcc.BPF made from a cache entry rather than compiled: its maps
    created (or opened where pinned) here, its functions loaded on demand."""

    def __init__(self, entry: dict[str, Any]) -> None:
        # What bcc.BPF.__init__ sets, without its compile.
        self.kprobe_fds: dict[Any, Any] = {}
        self.uprobe_fds: dict[Any, Any] = {}
        self.tracepoint_fds: dict[Any, Any] = {}
        self.raw_tracepoint_fds: dict[Any, Any] = {}
        self.kfunc_entry_fds: dict[Any, Any] = {}
        self.kfunc_exit_fds: dict[Any, Any] = {}
        self.lsm_fds: dict[Any, Any] = {}
        self.perf_buffers: dict[Any, Any] = {}
        self.open_perf_events: dict[Any, Any] = {}
        self._ringbuf_manager = None
        self.tracefile = None
        atexit.register(self.cleanup)
        self.debug = 0
        self.funcs: dict[bytes, Any] = {}
        self.tables: dict[bytes, Any] = {}
        self.module = None
        self.license = entry["license"].encode()
        self.kern_version = entry["kern_version"]
        self.map_fds: dict[str, int] = {}
        self.table_entries = {table["name"]: table for table in entry["tables"]}
        try:
            self._create_maps(entry["tables"])
            self.code = {function["name"].encode(): self._with_fds(function)
                         for function in entry["functions"]}
            self._autoload()
        except BaseException:
            self.cleanup()
            raise

    def _create_maps(self, tables: list[dict[str, Any]]) -> None:
        """Map-in-maps last: they are created with their inner template."""
        for table in sorted(tables, key=lambda t: t["type"] in MAP_IN_MAP_TYPES):
            fd = None
            if table["pin"]:
                with contextlib.suppress(FileNotFoundError):
                    fd = open_pinned(table["pin"])
            if fd is None:
                inner = self.map_fds[table["inner"]] if table["inner"] else 0
                attr = MapCreateAttr(
                    map_type=table["type"], key_size=table["key_size"],
                    value_size=table["value_size"],
                    max_entries=table["max_entries"], map_flags=table["flags"],
                    inner_map_fd=inner,
                    map_name=table["name"].encode()[:link.BPF_OBJ_NAME_LEN - 1])
                fd = link.bpf(BPF_MAP_CREATE, attr)
                self.map_fds[table["name"]] = fd
                if table["pin"]:
                    pin(fd, table["pin"])
            self.map_fds[table["name"]] = fd

    def _with_fds(self, function: dict[str, Any]) -> bytes:
        """The function's instructions naming this object's map fds."""
        code = bytearray(base64.b64decode(function["code"], validate=True))
        if len(code) % 8:
            raise ValueError(f"cached function {function['name']} is cut")
        for index, name in function["maps"]:
            if not 0 <= index < len(code) // 8 or code[index * 8] != BPF_LD_IMM64:
                raise ValueError(f"cached function {function['name']}: "
                                 f"no map load at {index}")
            code[index * 8 + 4:index * 8 + 8] = self.map_fds[name].to_bytes(
                4, "little")
        return bytes(code)

    def _autoload(self) -> None:
        """As bcc does at load: RAW_TRACEPOINT_PROBE functions attached."""
        for name in self.code:
            if name.startswith(AUTOLOAD_RAW_TRACEPOINT):
                self.attach_raw_tracepoint(
                    tp=name[len(AUTOLOAD_RAW_TRACEPOINT):], fn_name=name)

    def function_source(self, name: bytes) -> tuple[bytes, bytes, int] | None:
        """The instructions, license and kernel version of function `name`
        as loaded (kernel/arm.py reloads them for uprobe_multi links)."""
        code = self.code.get(name)
        return None if code is None else (code, self.license, self.kern_version)

    def load_func(self, func_name: bytes, prog_type: int, device: Any = None,
                  attach_type: int = -1) -> Any:
        if func_name in self.funcs:
            return self.funcs[func_name]
        code = self.code.get(func_name)
        if code is None:
            raise Exception(f"Unknown program {func_name!r}")
        try:
            fd = link.prog_load(prog_type, code, self.license, func_name,
                                max(attach_type, 0), self.kern_version)
        except link.LoadError as error:
            raise Exception(f"Failed to load BPF program {func_name!r}: "
                            f"{error.strerror}\n{error.log}") from None
        except OSError as error:
            raise Exception(f"Failed to load BPF program {func_name!r}: "
                            f"{error.strerror}") from None
        function = bcc.BPF.Function(self, func_name, fd)
        self.funcs[func_name] = function
        return function

    def get_table(self, name: bytes, keytype: Any = None, leaftype: Any = None,
                  reducer: Any = None) -> Any:
        table = self.table_entries.get(name.decode())
        if table is None:
            raise KeyError(name)
        if keytype is None and table["key_desc"]:
            keytype = bcc.BPF._decode_table_type(json.loads(table["key_desc"]))
        if leaftype is None and table["leaf_desc"]:
            leaftype = bcc.BPF._decode_table_type(json.loads(table["leaf_desc"]))
        kind = TABLE_CLASSES[table["type"]]
        arguments: dict[str, Any] = {}
        if kind in (bcc_table.PerCpuHash, bcc_table.PerCpuArray,
                    bcc_table.LruPerCpuHash):
            arguments["reducer"] = reducer
        if kind in (bcc_table.PerfEventArray, bcc_table.RingBuf):
            arguments["name"] = name
        # bcc's table constructors ask the module, which a cached program
        # lacks (libbcc answers -1): the entry says what the kernel made.
        made = kind(self, 0, self.map_fds[table["name"]], keytype, leaftype,
                    **arguments)
        made.ttype, made.flags = table["type"], table["flags"]
        made.max_entries = table["max_entries"]
        return made

    def close(self) -> None:
        super().close()
        for fd in self.map_fds.values():
            os.close(fd)
        self.map_fds = {}


def load_cached(sources: Sequence[Path], main_source: Path,
                cflags: Sequence[str]) -> Any:
    """A bcc.BPF for `main_source` compiled with `cflags`: from the cache
    when an entry matches, else compiled by bcc (and stored)."""
    directory = cache_dir()
    key = cache_key(main_source, sources, cflags) if directory else ""
    if directory:
        entry = read_entry(directory, key)
        if entry is not None:
            try:
                loaded = CachedBPF(entry)
                ARM.record("bpf cache hit %s for %s", key, main_source.name)
                return loaded
            except (OSError, ValueError, KeyError) as error:
                ARM.record("bpf cache entry %s not loaded: %s", key, str(error))
    compiled = bcc.BPF(src_file=str(main_source).encode(), cflags=list(cflags))
    if directory:
        entry = describe(compiled, key, main_source.read_text(errors="replace"),
                         cflags)
        if entry is not None:
            store_entry(directory, entry)
    return compiled
