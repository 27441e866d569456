"""Text output: printf in Python against the C library's, and record lines."""

from __future__ import annotations

import ctypes
import doctest
import io
import math
from typing import Any

import pytest

from recorder_tracer.decode.record import Record
from recorder_tracer.decode.render import format_message
from recorder_tracer.output.text import (
    TOPIC_WIDTH_MAX,
    TextPrinter,
    TimeMode,
    format_header,
    format_record,
    format_time,
)

LIBC = ctypes.CDLL("libc.so.6")
# C argument types, short so the table below reads like a printf call.
INT, LL, D = ctypes.c_int, ctypes.c_longlong, ctypes.c_double
P, S = ctypes.c_void_p, ctypes.c_char_p


def c_printf(fmt: str, *args: Any) -> str:
    """What the C library's snprintf makes of `fmt` and typed arguments."""
    buffer = ctypes.create_string_buffer(1024)
    LIBC.snprintf(buffer, len(buffer), fmt.encode(), *args)
    return buffer.value.decode("utf-8")


# (format, arguments as a record holds them, the same as C types)
CASES: list[tuple[str, list[Any], list[Any]]] = [
    ("plain text", [], []),
    ("100%% sure", [], []),
    ("%d %i", [42, -42], [INT(42), INT(-42)]),
    ("%5d|%-5d|%05d", [42, 42, -42], [INT(42), INT(42), INT(-42)]),
    ("%+d % d %+d", [5, 5, -5], [INT(5), INT(5), INT(-5)]),
    ("%.3d|%8.3d|%-8.3d|%08.3d", [7, -7, 7, 7], [INT(7), INT(-7), INT(7), INT(7)]),
    ("%.0d|%.0x|%#.0o", [0, 0, 0], [INT(0), INT(0), INT(0)]),
    ("%u %u", [3000000000, -1], [INT(-1294967296), INT(-1)]),
    ("%x %X %o", [255, 255, 8], [INT(255), INT(255), INT(8)]),
    ("%#x %#X %#o %#x %#o", [255, 255, 8, 0, 0],
     [INT(255), INT(255), INT(8), INT(0), INT(0)]),
    ("%#08x|%#-8x|%#.5o", [255, 255, 8], [INT(255), INT(255), INT(8)]),
    ("%+u % x", [5, 5], [INT(5), INT(5)]),
    ("%x %lx %llx", [-1, -1, -1], [INT(-1), LL(-1), LL(-1)]),
    ("%d %ld %lld", [2**40, 2**40, -(2**40)], [INT(0), LL(2**40), LL(-(2**40))]),
    ("%hd %hhd %hu %hhu", [70000, 300, -1, -1],
     [INT(70000), INT(300), INT(-1), INT(-1)]),
    ("%zd %jd %td %zu", [-1, -1, -1, 2**63], [LL(-1), LL(-1), LL(-1), LL(-(2**63))]),
    ("%'d", [1234567], [INT(1234567)]),
    ("%*d|%-*d|%.*d", [6, 42, 6, 42, 4, 42],
     [INT(6), INT(42), INT(6), INT(42), INT(4), INT(42)]),
    ("%*d|%.*d", [-6, 42, -1, 42], [INT(-6), INT(42), INT(-1), INT(42)]),
    ("%c%c%c", [65, 98, 0x143], [INT(65), INT(98), INT(0x143)]),
    ("%5c|%-5c|%05c", [65, 65, 65], [INT(65), INT(65), INT(65)]),
    ("%s|%10s|%-10s|%.2s|%5.1s", ["hello"] * 5, [S(b"hello")] * 5),
    ("%05s", ["ab"], [S(b"ab")]),
    ("%s", ["h\u00e9llo"], [S("h\u00e9llo".encode())]),
    ("%.2s|%6s", ["\u00e9t\u00e9", "\u00e9t\u00e9"],
     [S("\u00e9t\u00e9".encode())] * 2),
    ("%p %p", [0x1234, 0], [P(0x1234), P(0)]),
    ("%10p|%-10p|%10p", [0x1234, 0x1234, 0], [P(0x1234), P(0x1234), P(0)]),
    ("%020p|%.8p|%+p|% p", [0x1234] * 4, [P(0x1234)] * 4),
    ("%p", [0xFFFF800012345678], [P(0xFFFF800012345678)]),
    ("%f %F", [3.14159, 2.5], [D(3.14159), D(2.5)]),
    ("%.0f %.0f %.0f %.1f", [0.5, 1.5, 2.5, 0.25], [D(0.5), D(1.5), D(2.5), D(0.25)]),
    ("%10.3f|%-10.3f|%010.3f|%+.2f|% .2f",
     [3.14159, 3.14159, -3.14159, 2.0, 2.0],
     [D(3.14159), D(3.14159), D(-3.14159), D(2.0), D(2.0)]),
    ("%#.0f %#.0e %#g %#.3g", [1.0, 1.0, 1.0, 2.0],
     [D(1.0), D(1.0), D(1.0), D(2.0)]),
    ("%e %E %.2e %12.4e", [12345.678, 0.000123, -1.5e300, 1e-300],
     [D(12345.678), D(0.000123), D(-1.5e300), D(1e-300)]),
    ("%g %g %g %g %G", [100000.0, 1000000.0, 1e-4, 1e-5, 1e-10],
     [D(100000.0), D(1000000.0), D(1e-4), D(1e-5), D(1e-10)]),
    ("%.0g %.1g %.10g %g", [0.0, 0.15, 1 / 3, -0.0],
     [D(0.0), D(0.15), D(1 / 3), D(-0.0)]),
    ("%f %F %e %g %5.1f|%-6f|%06f",
     [math.inf, math.inf, -math.inf, math.nan, math.inf, math.nan, -math.inf],
     [D(math.inf), D(math.inf), D(-math.inf), D(math.nan), D(math.inf),
      D(math.nan), D(-math.inf)]),
    ("%+f % e %E %G", [math.nan, math.inf, -math.nan, math.inf],
     [D(math.nan), D(math.inf), D(-math.nan), D(math.inf)]),
    ("%a %a %a %a %A", [1.0, 1.5, -0.1, 0.0, 255.5],
     [D(1.0), D(1.5), D(-0.1), D(0.0), D(255.5)]),
    ("%a %a %a", [-0.0, 5e-324, 2.2250738585072014e-308],
     [D(-0.0), D(5e-324), D(2.2250738585072014e-308)]),
    ("%.0a %.0a %.1a %.1a %.1a %.2a", [1.5, 2.5, 1.03125, 1.09375, 1.96875, 5e-324],
     [D(1.5), D(2.5), D(1.03125), D(1.09375), D(1.96875), D(5e-324)]),
    ("%.20a|%#.0a|%020a|%-12a|%+a", [1.5, 1.0, 1.5, 1.5, 1.5],
     [D(1.5), D(1.0), D(1.5), D(1.5), D(1.5)]),
    ("%a %A %010a", [math.inf, math.nan, -math.inf],
     [D(math.inf), D(math.nan), D(-math.inf)]),
    ("%d %s %.1f %x %c", [1, "two", 3.0, 4, 53],
     [INT(1), S(b"two"), D(3.0), INT(4), INT(53)]),
    ("%5%|%-5%|", [], []),
]


@pytest.mark.parametrize(("fmt", "args", "c_args"), CASES, ids=[c[0] for c in CASES])
def test_format_message_matches_c_printf(fmt: str, args: list[Any],
                                         c_args: list[Any]) -> None:
    assert format_message(fmt, args) == c_printf(fmt, *c_args)


@pytest.mark.parametrize(("fmt", "args", "expected"), [
    # What C cannot tell us: values the controller could not get.
    ("a=%d b=%d", [1], "a=1 b=<missing>"),
    ("%s|%8s|%d|%p", [None, None, None, None],
     "<unreadable>|<unreadable>|<unreadable>|<unreadable>"),
    ("%s %s %s", [0, 0x1000, 2.5], "(null) <unreadable 0x1000> <double 2.5>"),
    # A value of another kind, converted as the C core converts it: %x of a
    # double shows its bits (-1.0 is 0xbff0000000000000: low 32 bits 0).
    ("%d %x %lx %.1f %c", [2.9, -1.0, -1.0, 3, 65.0], "2 0 bff0000000000000 3.0 A"),
    ("%d|%5d", ["text", "ab"], "text|   ab"),
    ("%d", [math.nan], "0"),
    ("%ld", [math.inf], "-9223372036854775808"),
    # Raw 64-bit slots (as BPF delivers them) read as C reads them.
    ("%d %ld %lu", [2**64 - 1, 2**64 - 1, 2**64 - 1], "-1 -1 18446744073709551615"),
    # Unknown conversions and a lone % stay as written; %n writes nothing.
    ("%y %n %", [1], "%y %n %"),
    ("%ls|%Lf", ["wide", 1.5], "wide|1.500000"),
    ("tab\there\n", [], "tab\there\n"),
])
def test_format_message_shows_what_c_cannot_tell(fmt: str, args: list[Any],
                                                 expected: str) -> None:
    assert format_message(fmt, args) == expected


def record(ts: int = 1_000_000_000, **fields: Any) -> Record:
    values: dict[str, Any] = dict(pid=4242, tid=4243, comm="server", topic="net",
                                  where="src/net.c:120", message="sent 42 bytes",
                                  args=[42], cpu=1)
    values.update(fields)
    return Record(ts=ts, **values)


def test_header_and_line_share_fixed_columns() -> None:
    header = format_header()
    line = format_record(record(ts=3_250_000_500), origin_ns=1_000_000_000)
    assert header == ("TIME(s)      PID     TID     COMM             TOPIC        "
                      "WHERE              MESSAGE")
    assert line == ("2.250000     4242    4243    server           net          "
                    "src/net.c:120      sent 42 bytes")
    assert len(header) - len("MESSAGE") == len(line) - len("sent 42 bytes") == 78


def test_line_keeps_the_end_of_a_long_location_and_one_line_messages() -> None:
    line = format_record(record(where="probes/src/long_file_name.c:1234",
                                message="two\nlines\n"))
    assert line.endswith("..file_name.c:1234 two\\nlines")


def test_long_topic_keeps_both_ends_within_its_column() -> None:
    line = format_record(record(topic="import__find__load__start"))
    header = format_header()

    assert line.split()[4] == "impor..start"
    assert header.index("WHERE") == line.index("src/net.c:120")


def test_printer_widens_topic_for_the_names_it_will_show() -> None:
    out = io.StringIO()
    printer = TextPrinter(out)
    printer.fit_topics(["line", "function__entry", "function__return"])
    printer.write(record(topic="function__return", where="python3.11"))
    printer.write(record(topic="import__find__load__start__long", where="x.py"))
    printer.fit_topics(["much_longer_than_the_rest"])     # too late: no change
    printer.write(record(topic="line"))
    header, *lines = out.getvalue().splitlines()

    assert lines[0].split()[4] == "function__return"
    assert lines[1].split()[4] == "import_..t__long"
    assert {line.index(value) for line, value in
            zip(lines, ["python3.11", "x.py", "src/net.c:120"], strict=True)} \
        == {header.index("WHERE")}


@pytest.mark.parametrize("mode", list(TimeMode))
def test_columns_before_the_message_stay_under_100_characters(
        mode: TimeMode) -> None:
    out = io.StringIO()
    printer = TextPrinter(out, time_mode=mode)
    printer.fit_topics(["x" * 80])
    printer.write(record(topic="x" * 80, comm="c" * 15, pid=4194304, tid=4194304,
                         where="w" * 40, message=""))
    header, line = out.getvalue().splitlines()

    assert printer.topic_width == TOPIC_WIDTH_MAX
    assert len(line.rstrip()) < 100
    assert header.index("MESSAGE") == len(line)


@pytest.mark.parametrize(("mode", "origin", "expected"), [
    (TimeMode.RELATIVE, 1_000_000_000, "0.500001"),
    (TimeMode.RELATIVE, 2_000_000_000, "-0.499998"),
    (TimeMode.MONOTONIC, 0, "1.500001"),
])
def test_time_column_in_seconds(mode: TimeMode, origin: int, expected: str) -> None:
    assert format_time(1_500_001_999, mode, origin) == expected


def test_wall_time_adds_the_clock_offset() -> None:
    import time

    offset = 86_400 * 1_000_000_000 * 365
    text = format_time(1_500_001_999, TimeMode.WALL, wall_offset_ns=offset)
    seconds = (1_500_001_999 + offset) // 1_000_000_000
    assert text == time.strftime("%H:%M:%S", time.localtime(seconds)) + ".500001"
    assert format_header(TimeMode.WALL).startswith("TIME            PID ")


def test_printer_prints_the_header_once_and_times_from_the_first_record() -> None:
    out = io.StringIO()
    printer = TextPrinter(out)
    printer.write(record(ts=5_000_000_000))
    printer.write(record(ts=5_250_000_000, tid=4244, message="again"))
    printer.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == format_header()
    assert [line.split()[0] for line in lines[1:]] == ["0.000000", "0.250000"]
    assert lines[2].split()[2] == "4244"
    assert lines[2].endswith(" again")
    assert len(lines) == 3


def test_docstring_examples_hold() -> None:
    from recorder_tracer.decode import render
    from recorder_tracer.output import text

    assert doctest.testmod(render).failed == 0
    assert doctest.testmod(text).failed == 0
