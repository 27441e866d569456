"""Whether a chunk's entries are all of one kind, told from their bytes;
whether an entry has a %s argument, from its argument kinds.

An entry's kind is what a line plan is compiled for (output/json_plans.py):
ENTRY's fields 3-9, its topic, argument kinds, CPU, count, flags, format
and location addresses. The batch stream (kernel/batch_stream.py) leaves a
chunk whose entries share those bytes unpacked, for its first entry's plan
to render whole: two kinds taken for one would write one format's text
with another entry's values.
"""

from __future__ import annotations

import re
import struct

from recorder_tracer.abi import ENTRY

KIND_FIELDS = slice(3, 10)      # ENTRY's fields of a kind (entry[KIND_FIELDS])


def _field_offsets() -> list[int]:
    """Where each field of ENTRY starts, then where the last one ends."""
    offsets, offset = [], 0
    for count, letter in re.findall(r"(\d*)([a-zA-Z])", ENTRY.format):
        for _ in range(int(count or 1)):
            offsets.append(offset)
            offset += struct.calcsize("<" + letter)
    return [*offsets, offset]


_OFFSETS = _field_offsets()
assert _OFFSETS[-1] == ENTRY.size   # packed ("<"): no padding to skip
_KIND_START, _KIND_END = _OFFSETS[KIND_FIELDS.start], _OFFSETS[KIND_FIELDS.stop]
# The kind's bytes of each entry, nothing else, in one struct pass.
ENTRY_KIND = struct.Struct(f"<{_KIND_START}x{_KIND_END - _KIND_START}s"
                           f"{ENTRY.size - _KIND_END}x")


def chunk_of_one_kind(data: bytes | memoryview) -> bool:
    """True if `data` (whole entries as ENTRY packs them) holds at least
    one entry, and every one of the first's kind."""
    return len(set(ENTRY_KIND.iter_unpack(data))) == 1


def has_string_argument(arg_types: int) -> bool:
    """True if an argument of these kinds (2 bits each) is a %s string
    (kind 2, binary 10: its high bit set, its low bit clear)."""
    return bool(arg_types & ~(arg_types << 1) & 0xAAAAAA)
