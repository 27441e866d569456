"""printf in Python: a record's format rendered with its decoded arguments.

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
from collections.abc import Sequence

from recorder_tracer.decode.record import Arg

MISSING = "<missing>"
UNREADABLE = "<unreadable>"

# %[flags][width][.precision][length]conversion, as the C core walks it.
_SPEC = re.compile(
    r"%(?P<flags>[-+ #0']*)(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d*))?"
    r"(?P<length>[hlLqjzt]*)(?P<conversion>.?)",
    re.DOTALL,
)
_CONVERSIONS = frozenset("diouxXcspfFeEgGaA")
FIELD_MAX = 128     # widths and precisions, as the C core's dump
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
    >>> format_message("%x %lx %d", [3.1415, 3.1415, 3.1415])
    'c083126f 400921cac083126f 3'
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
            width = int(width_text[:6])     # cut below: no 4300-digit int()
        precision: int | None = None
        if precision_text == "*":
            precision = _star(args, next_arg)
            next_arg += 1
            if precision < 0:
                precision = None
        elif precision_text is not None:
            precision = int(precision_text[:6] or "0")
        # A traced process chooses these: %2147483647d took 4.3 GB. The C
        # dump cuts them to the same bound (probes/src/format.c).
        width = min(width, FIELD_MAX)
        if precision is not None:
            precision = min(precision, FIELD_MAX)
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
        # Hex and octal of a float show its bits, as the C core does (seed).
        raw = (struct.unpack("<Q", struct.pack("<d", value))[0]
               if isinstance(value, float) and conversion in "oxX" else None)
        number = _wrap(_as_int(value) if raw is None else raw, bits, signed)
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
