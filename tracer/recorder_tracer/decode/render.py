"""Text output of records: bcc-style fixed columns, and printf in Python.

`format_message` formats a record's printf-style format with its decoded
arguments on the controller side, as the C core's `recorder_format_entry`
does in the process: arguments are 64-bit slots, and the conversion and its
length modifier decide how a slot is read (`%d` reads an int, `%ld` a long,
`%hhx` an unsigned char), so `RECORD(t, "%x", -1)` shows `ffffffff` in both.
What cannot be shown says so: `<missing>` for an absent argument,
`<unreadable>` for a value BPF could not read (None).
"""

from __future__ import annotations

import math
import re
import struct
import time
from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Any, TextIO

from recorder_tracer.decode.record import Arg, Record

MISSING = "<missing>"
UNREADABLE = "<unreadable>"

# %[flags][width][.precision][length]conversion, as the C core walks it.
_SPEC = re.compile(
    r"%(?P<flags>[-+ #0']*)(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d*))?"
    r"(?P<length>[hlLqjzt]*)(?P<conversion>.?)",
    re.DOTALL,
)
_CONVERSIONS = frozenset("diouxXcspfFeEgGaA")
_INT_BITS = {"hh": 8, "h": 16, "": 32}  # any other modifier reads 64 bits


def format_message(fmt: str, args: Sequence[Arg]) -> str:
    """Format `fmt` like C's printf, taking values from `args`.

    Supports %d %i %u %o %x %X %c %s %p %f %F %e %E %g %G %a %A and %%, with
    flags (-+ #0'), width and precision (also `*`); length modifiers (h hh l
    ll L q j z t) select the integer width as in C.

    >>> format_message("sent %d bytes to %s", [42, "host"])
    'sent 42 bytes to host'
    >>> format_message("%#06x|%-5s|%+.2e|%5.1f%%", [255, "ab", 1234.5, 99.44])
    '0x00ff|ab   |+1.23e+03| 99.4%'
    >>> format_message("%x %lx %hhu", [-1, -1, 300])
    'ffffffff ffffffffffffffff 44'
    >>> format_message("%s and %d", ["one"])
    'one and <missing>'
    """
    out: list[str] = []
    next_arg = 0
    position = 0
    while True:
        start = fmt.find("%", position)
        if start < 0:
            out.append(fmt[position:])
            break
        out.append(fmt[position:start])
        match = _SPEC.match(fmt, start)
        assert match is not None  # the pattern matches any "%"
        position = match.end()
        flags = match["flags"]
        width_text, precision_text = match["width"], match["precision"]
        width = 0
        if width_text == "*":
            width = _star(args, next_arg)
            next_arg += 1
            if width < 0:
                flags, width = flags + "-", -width
        elif width_text:
            width = int(width_text)
        precision: int | None = None
        if precision_text == "*":
            precision = _star(args, next_arg)
            next_arg += 1
            if precision < 0:
                precision = None
        elif precision_text is not None:
            precision = int(precision_text or "0")
        conversion = match["conversion"]
        if conversion == "%":
            out.append("%")
            continue
        if conversion not in _CONVERSIONS or not conversion:
            out.append(match.group())
            continue
        if next_arg >= len(args):
            out.append(MISSING)
            next_arg += 1
            continue
        value = args[next_arg]
        next_arg += 1
        out.append(_convert(value, conversion, flags, width, precision,
                            match["length"]))
    return "".join(out)


def _star(args: Sequence[Arg], index: int) -> int:
    """A `*` width or precision: the argument read as a C int."""
    value = args[index] if index < len(args) else 0
    if isinstance(value, float):
        value = _to_int(value)
    if not isinstance(value, int):
        return 0
    return _wrap(value, 32, signed=True)


def _convert(value: Arg, conversion: str, flags: str, width: int,
             precision: int | None, length: str) -> str:
    if value is None:
        return _pad(UNREADABLE, width, flags)
    if conversion == "s":
        return _string(value, flags, width, precision)
    if isinstance(value, str):      # a string where a number was expected
        return _string(value, flags, width, None)
    if conversion == "c":
        return _pad(chr(_wrap(_as_int(value), 8, signed=False)), width, flags)
    if conversion == "p":
        return _pointer(_wrap(_as_int(value), 64, signed=False), flags, width,
                        precision)
    if conversion in "diouxX":
        bits = _INT_BITS.get(length, 64)
        signed = conversion in "di"
        number = _wrap(_as_int(value), bits, signed)
        return _integer(number, conversion, flags, width, precision, signed)
    number_f = float(value) if isinstance(value, float) else float(_as_int(value))
    return _floating(number_f, conversion, flags, width, precision)


def _as_int(value: int | float) -> int:
    return value if isinstance(value, int) else _to_int(value)


def _to_int(value: float) -> int:
    """C's (long long) of a double; x86 gives INT64_MIN when out of range."""
    if not math.isfinite(value) or abs(value) >= 2.0**63:
        return -(1 << 63)
    return int(value)


def _wrap(value: int, bits: int, signed: bool) -> int:
    value &= (1 << bits) - 1
    if signed and value >= 1 << (bits - 1):
        value -= 1 << bits
    return value


def _pad(text: str, width: int, flags: str, zero_after: int | None = None) -> str:
    """Pad to `width` like printf: left with '-', zeros after the first
    `zero_after` characters (sign and prefix) when zero padding applies."""
    missing = width - len(text)
    if missing <= 0:
        return text
    if "-" in flags:
        return text + " " * missing
    if zero_after is not None:
        return text[:zero_after] + "0" * missing + text[zero_after:]
    return " " * missing + text


def _sign(negative: bool, flags: str) -> str:
    if negative:
        return "-"
    if "+" in flags:
        return "+"
    return " " if " " in flags else ""


def _integer(number: int, conversion: str, flags: str, width: int,
             precision: int | None, signed: bool) -> str:
    magnitude = abs(number)
    base = {"o": "o", "x": "x", "X": "X"}.get(conversion, "d")
    digits = format(magnitude, base)
    if precision is not None:
        digits = "" if precision == 0 and magnitude == 0 else digits.zfill(precision)
    prefix = ""
    if "#" in flags:
        if conversion == "o" and not digits.startswith("0"):
            digits = "0" + digits
        elif conversion in "xX" and magnitude:
            prefix = "0" + conversion
    if signed:
        prefix = _sign(number < 0, flags) + prefix
    zero = len(prefix) if "0" in flags and precision is None else None
    return _pad(prefix + digits, width, flags, zero)


def _pointer(address: int, flags: str, width: int, precision: int | None) -> str:
    """glibc's %p: "(nil)" for NULL, else like %#lx (sign flags included)."""
    if address == 0:
        return _pad("(nil)", width, flags)
    digits = format(address, "x")
    if precision is not None:
        digits = digits.zfill(precision)
    prefix = _sign(False, flags) + "0x"
    zero = len(prefix) if "0" in flags and precision is None else None
    return _pad(prefix + digits, width, flags, zero)


def _string(value: str | int | float, flags: str, width: int,
            precision: int | None) -> str:
    """%s: precision and width count bytes of UTF-8, as in C."""
    if isinstance(value, float):
        return _pad(f"<double {_floating(value, 'g', '', 0, None)}>", width, flags)
    if isinstance(value, int):
        text = "(null)" if value == 0 else f"<unreadable {value & (2**64 - 1):#x}>"
        return _pad(text, width, flags)
    data = value.encode("utf-8", "surrogateescape")
    if precision is not None:
        data = data[:precision]
    text = data.decode("utf-8", "ignore")
    missing = width - len(data)
    if missing <= 0:
        return text
    return text + " " * missing if "-" in flags else " " * missing + text


def _floating(number: float, conversion: str, flags: str, width: int,
              precision: int | None) -> str:
    negative = math.copysign(1.0, number) < 0
    if not math.isfinite(number):
        text = "nan" if math.isnan(number) else "inf"
        if conversion.isupper():
            text = text.upper()
        return _pad(_sign(negative, flags) + text, width, flags)
    if conversion in "aA":
        body = _hex_float(abs(number), precision, "#" in flags)
        if conversion == "A":
            body = body.upper()
        sign = _sign(negative, flags)
        zero = len(sign) + 2 if "0" in flags else None
        return _pad(sign + body, width, flags, zero)
    spec = "%" + flags.replace("'", "") + (str(width) if width else "")
    if precision is not None:
        spec += f".{precision}"
    return (spec + conversion) % number


def _hex_float(number: float, precision: int | None, point: bool) -> str:
    """glibc's %a of a non-negative finite double: 0x1.8p+0, 0x0.0001p-1022."""
    (bits,) = struct.unpack("<Q", struct.pack("<d", number))
    biased, fraction = bits >> 52, bits & ((1 << 52) - 1)
    if biased == 0:
        lead, exponent = 0, 0 if fraction == 0 else -1022
    else:
        lead, exponent = 1, biased - 1023
    if precision is None:
        digits = f"{fraction:013x}".rstrip("0")
    elif precision >= 13:
        digits = f"{fraction:013x}" + "0" * (precision - 13)
    else:
        shift = (13 - precision) * 4
        quotient, remainder = divmod((lead << 52) | fraction, 1 << shift)
        half = 1 << (shift - 1)
        if remainder > half or (remainder == half and quotient & 1):
            quotient += 1      # round half to even, as glibc does
        lead = quotient >> (precision * 4)
        kept = quotient & ((1 << (precision * 4)) - 1)
        digits = f"{kept:0{precision}x}" if precision else ""
    dot = "." if digits or point else ""
    return f"0x{lead:x}{dot}{digits}p{exponent:+d}"


# --------------------------------------------------------------------------
# Lines


class TimeMode(Enum):
    """How the TIME column shows a record's timestamp."""

    RELATIVE = "relative"     # seconds since the first record (or a given origin)
    MONOTONIC = "monotonic"   # seconds of CLOCK_MONOTONIC, the records' clock
    WALL = "wall"             # local wall-clock time, HH:MM:SS.micros


# (title, width) after TIME; the last column, MESSAGE, takes the rest.
# TOPIC's width is the least it gets: a printer widens it to fit the names
# it will show (USDT probes are long: function__entry), up to TOPIC_WIDTH_MAX,
# so the columns before MESSAGE stay under 100 characters.
COLUMNS: tuple[tuple[str, int], ...] = (
    ("PID", 7), ("TID", 7), ("COMM", 16), ("TOPIC", 12), ("WHERE", 18),
    ("MESSAGE", 0),
)
TOPIC_WIDTH = 12
TOPIC_WIDTH_MAX = 24
WHERE_WIDTH = 18
# TIME's title and width: 12345.123456, 1234567.123456, 12:34:56.123456
TIME_COLUMN = {
    TimeMode.RELATIVE: ("TIME(s)", 12),
    TimeMode.MONOTONIC: ("TIME(s)", 14),
    TimeMode.WALL: ("TIME", 15),
}


def format_header(time_mode: TimeMode = TimeMode.RELATIVE,
                  topic_width: int = TOPIC_WIDTH) -> str:
    """The column titles, once at the top of the output.

    >>> format_header().split()
    ['TIME(s)', 'PID', 'TID', 'COMM', 'TOPIC', 'WHERE', 'MESSAGE']
    """
    return _columns(time_mode, [TIME_COLUMN[time_mode][0],
                                *(title for title, _ in COLUMNS)], topic_width)


def topic_width_for(names: Iterable[str]) -> int:
    """The TOPIC width that fits `names`, within [TOPIC_WIDTH, TOPIC_WIDTH_MAX].

    >>> topic_width_for(["tick"]), topic_width_for(["function__entry"])
    (12, 15)
    >>> topic_width_for(["import__find__load__start__with__a__long__tail"])
    24
    """
    longest = max((len(name) for name in names), default=0)
    return min(max(longest, TOPIC_WIDTH), TOPIC_WIDTH_MAX)


def shorten(text: str, width: int) -> str:
    """`text` cut to `width` in its middle, where names differ least (both
    `import__find__load__start` and `__done` keep their ends).

    >>> shorten("function__entry", 12), shorten("tick", 12)
    ('funct..entry', 'tick')
    """
    if len(text) <= width:
        return text
    kept = width - 2
    return text[:kept - kept // 2] + ".." + text[len(text) - kept // 2:]


def format_time(ts: int, time_mode: TimeMode = TimeMode.RELATIVE,
                origin_ns: int = 0, wall_offset_ns: int = 0) -> str:
    """The TIME column of a timestamp (ns, CLOCK_MONOTONIC).

    `wall_offset_ns` is CLOCK_REALTIME - CLOCK_MONOTONIC (see `wall_offset`).

    >>> format_time(3_500_000_000, origin_ns=1_000_000_000)
    '2.500000'
    """
    if time_mode is TimeMode.WALL:
        wall = ts + wall_offset_ns
        seconds, nanoseconds = divmod(wall, 1_000_000_000)
        return time.strftime("%H:%M:%S", time.localtime(seconds)) + \
            f".{nanoseconds // 1000:06d}"
    if time_mode is TimeMode.RELATIVE:
        ts -= origin_ns
    sign = "-" if ts < 0 else ""
    seconds, nanoseconds = divmod(abs(ts), 1_000_000_000)
    return f"{sign}{seconds}.{nanoseconds // 1000:06d}"


def wall_offset() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC now, in ns."""
    return time.clock_gettime_ns(time.CLOCK_REALTIME) - \
        time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def format_record(record: Record, time_mode: TimeMode = TimeMode.RELATIVE,
                  origin_ns: int = 0, wall_offset_ns: int = 0,
                  topic_width: int = TOPIC_WIDTH) -> str:
    """One line for a record, under `format_header`'s columns.

    WHERE keeps its end (the line number) when it is too wide, TOPIC its
    two ends (see `shorten`); the message stays on one line (a final
    newline is dropped, others shown as \\n).

    >>> r = Record(ts=2_000_123_000, pid=42, tid=43, comm="app", topic="net",
    ...            where="src/net.c:12", message="sent 4", args=[4], cpu=0)
    >>> format_record(r, origin_ns=1_000_000_000).split(maxsplit=6)
    ['1.000123', '42', '43', 'app', 'net', 'src/net.c:12', 'sent 4']
    """
    where = record.where if len(record.where) <= WHERE_WIDTH \
        else ".." + record.where[-(WHERE_WIDTH - 2):]
    message = record.message.removesuffix("\n").replace("\n", "\\n")
    return _columns(time_mode, [
        format_time(record.ts, time_mode, origin_ns, wall_offset_ns),
        str(record.pid), str(record.tid), record.comm,
        shorten(record.topic, topic_width), where, message,
    ], topic_width)


def _columns(time_mode: TimeMode, values: Iterable[str],
             topic_width: int = TOPIC_WIDTH) -> str:
    widths = [TIME_COLUMN[time_mode][1],
              *(topic_width if title == "TOPIC" else width
                for title, width in COLUMNS)]
    return " ".join(value.ljust(width) if width else value
                    for value, width in zip(values, widths, strict=True))


class TextPrinter:
    """Print records as lines under a header printed once.

    With RELATIVE time the origin is `origin_ns`, or the first record's time.
    TOPIC is `topic_width` wide; `fit_topics` widens it before the header is
    out. It has the writers' interface (`write`, `close`), so the CLI can
    pick it or an exporter alike.
    """

    def __init__(self, stream: TextIO, time_mode: TimeMode = TimeMode.RELATIVE,
                 origin_ns: int | None = None, header: bool = True,
                 flush: bool = True, topic_width: int = TOPIC_WIDTH) -> None:
        self.stream = stream
        self.time_mode = time_mode
        self.origin_ns = origin_ns
        self.topic_width = topic_width
        self.wall_offset_ns = wall_offset() if time_mode is TimeMode.WALL else 0
        self.flush_each = flush
        self._header = header
        self._header_out = False
        self.count = 0

    def fit_topics(self, names: Iterable[str]) -> None:
        """Make TOPIC wide enough for `names` (see `topic_width_for`); once
        the header is out, the columns stay as they are."""
        if self.count == 0 and not self._header_out:
            self.topic_width = topic_width_for(names)

    def print_header(self) -> None:
        """Print the header now, unless it was printed already."""
        if self._header:
            self._header = False
            self._header_out = True
            self.stream.write(format_header(self.time_mode, self.topic_width)
                              + "\n")

    def write(self, record: Record) -> None:
        """Print one record."""
        self.print_header()
        if self.origin_ns is None:
            self.origin_ns = record.ts
        self.stream.write(format_record(record, self.time_mode, self.origin_ns,
                                        self.wall_offset_ns, self.topic_width)
                          + "\n")
        self.count += 1
        if self.flush_each:
            self.stream.flush()

    def close(self, summary: Any = None) -> None:
        """Flush; the summary is the caller's to print (stderr, in bcc style)."""
        self.stream.flush()


def print_header(stream: TextIO, time_mode: TimeMode = TimeMode.RELATIVE) -> None:
    """Print the column titles on `stream`."""
    stream.write(format_header(time_mode) + "\n")
