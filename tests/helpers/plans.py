"""What the line plan tests share (tests/test_line_plans.py,
tests/test_chrome_plans.py): entries to render, values and formats that
try a plan's integer conversions."""

from __future__ import annotations

from recorder_tracer.abi import ENTRY

VALUES = [0, 1, 7, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
          2**63 - 1, 2**63, 2**64 - 1, 2**64 - 300, 1234567890123]
INTEGER_FORMATS = [
    "load %ld %ld", "%d|%i", "%u and %lu", "%x %lx", "%X%llX", "%o-%lo",
    "%hhd %hhu", "%hd %hx", "%zd %jx", "100%% %d%%", "%qd %Lu",
    'quote " backslash \\ tab \t nl \n %d', "csi \x9b31m bidi \u202e %d",
    "é ü 漢 %d", "{braces} {t[0]} 'single' %d", "",
]


def entry(fmt_address: int, values: list[int], arg_types: int = 0,
          flags: int = 0, nargs: int | None = None) -> tuple[int, ...]:
    """An entry as ENTRY unpacks it, of topic 3, at location 0x2000."""
    nargs = len(values) if nargs is None else nargs
    args = [*values, *[0] * (12 - len(values))]
    return ENTRY.unpack(ENTRY.pack(123_456_789, 5, 4242, 3, arg_types, 1, nargs,
                                   flags, fmt_address, 0x2000, *args))
