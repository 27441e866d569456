"""A chunk's entries of one kind are told from their bytes
(decode/chunk_kind.py): entries that differ in any field of a kind (topic,
argument kinds, CPU, count, flags, format, location) are not one kind;
entries that differ only in timestamp, sequence, thread or arguments are.
"""

from __future__ import annotations

import pytest

from recorder_tracer.abi import ENTRY
from recorder_tracer.decode.chunk_kind import ENTRY_KIND, KIND_FIELDS, chunk_of_one_kind

# timestamp, sequence, tid, topic_id, arg_types, cpu, nargs, flags, format,
# where, args[12]
BASE = (123_456_789, 5, 4242, 3, 0b1100, 1, 2, 4, 0x1000, 0x2000,
        *range(100, 112))
NAMES = ["timestamp", "sequence", "tid", "topic_id", "arg_types", "cpu",
         "nargs", "flags", "format", "where", *[f"args[{i}]" for i in range(12)]]
FIELD_BITS = [64, 64, 32, 32, 32, 16, 8, 8, 64, 64, *[64] * 12]


def changed(field: int, bit: int) -> tuple[int, ...]:
    """BASE with one bit of one field flipped."""
    values = list(BASE)
    values[field] ^= 1 << bit
    return tuple(values)


def chunk(*entries: tuple[int, ...]) -> bytes:
    return b"".join(ENTRY.pack(*e) for e in entries)


@pytest.mark.parametrize("field", range(len(BASE)), ids=NAMES)
def test_entries_differing_in_one_field_are_one_kind_unless_it_is_a_kinds(
        field: int) -> None:
    of_kind = 3 <= field <= 9      # topic_id .. where
    for bit in (0, FIELD_BITS[field] // 2, FIELD_BITS[field] - 1):
        other = changed(field, bit)
        assert chunk_of_one_kind(chunk(BASE, other)) is not of_kind, (NAMES[field], bit)
        # Anywhere in a chunk of 16: the last entry, or the first.
        assert chunk_of_one_kind(chunk(*[BASE] * 15, other)) is not of_kind
        assert chunk_of_one_kind(chunk(other, *[BASE] * 15)) is not of_kind


def test_a_kind_is_fields_3_to_9_of_an_entry() -> None:
    assert slice(3, 10) == KIND_FIELDS
    assert ENTRY_KIND.size == ENTRY.size
    assert ENTRY_KIND.unpack(chunk(BASE))[0] == ENTRY.pack(*BASE)[20:48]


def test_one_entry_is_one_kind_and_none_is_not() -> None:
    assert chunk_of_one_kind(chunk(BASE))
    assert chunk_of_one_kind(memoryview(chunk(*[BASE] * 16)))
    assert not chunk_of_one_kind(b"")
