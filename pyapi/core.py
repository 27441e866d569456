"""ctypes binding to librecorder: run-time topics and records.

The library is found, in order: $RECORDER_LIBRARY, the repository's
build/librecorder.so (an editable install), the system's librecorder.so.
Without it, topics still exist and `record` does nothing: a program must
never fail because its flight recorder is missing.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import os
import struct
import sys
from pathlib import Path

MAX_ARGS = 12
ARG_INT, ARG_DOUBLE, ARG_STRING, ARG_POINTER = range(4)
# Strings passed as %s arguments stay alive this long (in records), so a
# dump soon after still reads them; older ones may be freed.
KEPT_STRINGS = 4096

_library: ctypes.CDLL | None = None
_loaded = False
_kept_formats: dict[str, ctypes.c_char_p] = {}
_kept_places: dict[tuple[str, int], ctypes.c_char_p] = {}
_kept_strings: collections.deque[ctypes.c_char_p] = collections.deque(
    maxlen=KEPT_STRINGS)


def _candidates() -> list[str]:
    paths = []
    if os.environ.get("RECORDER_LIBRARY"):
        paths.append(os.environ["RECORDER_LIBRARY"])
    paths.append(str(Path(__file__).resolve().parent.parent / "build"
                     / "librecorder.so"))
    system = ctypes.util.find_library("recorder")
    if system:
        paths.append(system)
    return paths


def library() -> ctypes.CDLL | None:
    """librecorder, loaded once; None if none could be loaded."""
    global _library, _loaded
    if _loaded:
        return _library
    _loaded = True
    for path in _candidates():
        try:
            loaded = ctypes.CDLL(path)
        except OSError:
            continue
        loaded.recorder_topic_create.restype = ctypes.c_void_p
        loaded.recorder_topic_create.argtypes = [
            ctypes.c_char_p, ctypes.c_uint, ctypes.c_char_p]
        loaded.recorder_record_dynamic.restype = None
        loaded.recorder_record_dynamic.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint,
            ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint64)]
        loaded.recorder_dump_for.restype = ctypes.c_uint
        loaded.recorder_dump_for.argtypes = [ctypes.c_char_p]
        loaded.recorder_trace_set.restype = ctypes.c_int
        loaded.recorder_trace_set.argtypes = [ctypes.c_char_p]
        _library = loaded
        break
    return _library


def available() -> bool:
    """True when records reach the C core."""
    return library() is not None


def _kept(text: str, cache: dict, key: object) -> ctypes.c_char_p:
    kept = cache.get(key)
    if kept is None:
        kept = cache[key] = ctypes.c_char_p(text.encode())
    return kept


def _convert(value: object) -> tuple[int, int]:
    """(64-bit slot, kind) for one argument."""
    if isinstance(value, bool | int):
        return value & 0xFFFF_FFFF_FFFF_FFFF, ARG_INT
    if isinstance(value, float):
        return struct.unpack("<Q", struct.pack("<d", value))[0], ARG_DOUBLE
    if value is None:
        return 0, ARG_POINTER
    text = value if isinstance(value, str | bytes) else str(value)
    kept = ctypes.c_char_p(text.encode() if isinstance(text, str) else text)
    _kept_strings.append(kept)
    return ctypes.cast(kept, ctypes.c_void_p).value or 0, ARG_STRING


class Topic:
    """A run-time topic: a ring of `size` records per CPU in the C core.

    >>> Topic("doc_example", 8, "An example").name
    'doc_example'
    """

    def __init__(self, name: str, size: int = 64, description: str = "") -> None:
        self.name = name
        self.size = size
        self.description = description
        core = library()
        self._handle = (core.recorder_topic_create(
            name.encode(), size, description.encode()) if core else None)

    def record(self, format: str, *args: object) -> None:
        """Record `format` % args (printf syntax) with the caller's location."""
        if self._handle is None:
            return
        frame = sys._getframe(1)
        self._record(frame.f_code.co_filename, frame.f_lineno, format, args)

    def _record(self, filename: str, line: int, format: str,
                args: tuple[object, ...]) -> None:
        slots = (ctypes.c_uint64 * MAX_ARGS)()
        kinds = 0
        for index, value in enumerate(args[:MAX_ARGS]):
            slots[index], kind = _convert(value)
            kinds |= kind << (2 * index)
        where = _kept(f"{filename}:{line}", _kept_places, (filename, line))
        core = library()
        assert core is not None
        core.recorder_record_dynamic(
            self._handle, where, _kept(format, _kept_formats, format),
            min(len(args), MAX_ARGS), kinds, slots)


_topics: dict[str, Topic] = {}


def topic(name: str, size: int = 64, description: str = "") -> Topic:
    """The topic called `name`, made on first use."""
    found = _topics.get(name)
    if found is None:
        found = _topics[name] = Topic(name, size, description)
    return found


def record(name: str, format: str, *args: object) -> None:
    """Record into topic `name` (made with default size on first use)."""
    found = topic(name)
    if found._handle is None:
        return
    frame = sys._getframe(1)
    found._record(frame.f_code.co_filename, frame.f_lineno, format, args)


def dump(pattern: str = "all") -> int:
    """Print the rings of topics matching `pattern` on stderr; entries shown."""
    core = library()
    return int(core.recorder_dump_for(pattern.encode())) if core else 0


def trace_set(spec: str) -> int:
    """Apply a trace spec (RECORDER_TRACES syntax); 0 when it was valid."""
    core = library()
    return int(core.recorder_trace_set(spec.encode())) if core else 0
