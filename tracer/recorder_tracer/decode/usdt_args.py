"""USDT argument specs: parse a note's argument string, lower it for BPF,
decode the values BPF sends back.

An SDT note describes each argument as `[-]SIZE@OPERAND` in the
assembler's syntax (x86-64, AT&T): `-4@%eax` is a signed 4-byte value in
eax, `8@-40(%rbp)` 8 bytes of memory at rbp - 40, `4@$5` the constant 5,
`-4@40+CheckpointStats(%rip)` 4 bytes at the symbol's address + 40. The
controller parses them once per probe site (`parse_arguments`), lowers each
into a `struct usdt_arg_spec` of kernel/bpf/usdt.h for one process (the
load bias turns a symbol into an address there), and `decode_value` turns
what BPF read into a Python value under the user's format hint.

Indexed operands (`(%rax,%rbx,8)`) and the high-byte registers (%ah...)
are not supported: such an argument is shown as unreadable, never guessed.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

from recorder_tracer.abi import USDT_MAX_ARGS
from recorder_tracer.decode.record import Arg
from recorder_tracer.target.elf import ElfFile, ElfFormatError
from recorder_tracer.target.safe_open import open_regular

MAX_ARGS = USDT_MAX_ARGS


class ArgKind(IntEnum):
    """Where an argument lives: enum usdt_arg_kind of kernel/bpf/usdt.h."""

    NONE = 0        # unsupported operand
    CONST = 1
    REG = 2
    DEREF = 3       # memory at register + offset
    ABS = 4         # memory at a symbol (+ offset), resolved per process


class ArgFormat(Enum):
    """How to show an argument: the letters of `--usdt ...:s,d,u,x`."""

    AUTO = "a"      # strings where a pointer-sized value points to text
    STRING = "s"
    SIGNED = "d"
    UNSIGNED = "u"
    HEX = "x"


# Byte offsets in the x86-64 kernel's struct pt_regs (checked against the
# running kernel's BTF by tests/test_usdt.py).
PT_REGS_OFFSETS = {
    "r15": 0, "r14": 8, "r13": 16, "r12": 24, "bp": 32, "bx": 40,
    "r11": 48, "r10": 56, "r9": 64, "r8": 72, "ax": 80, "cx": 88,
    "dx": 96, "si": 104, "di": 112, "ip": 128, "sp": 152,
}


def _register_names() -> dict[str, str]:
    """Every x86-64 register name an operand may use -> its pt_regs field."""
    names: dict[str, str] = {}
    for letter in "abcd":
        field = f"{letter}x"
        for name in (f"r{letter}x", f"e{letter}x", f"{letter}x", f"{letter}l"):
            names[name] = field
    for field in ("si", "di", "bp", "sp"):
        for name in (f"r{field}", f"e{field}", field, f"{field}l"):
            names[name] = field
    for number in range(8, 16):
        for suffix in ("", "d", "w", "b"):
            names[f"r{number}{suffix}"] = f"r{number}"
    names["rip"] = "ip"
    return names


REGISTERS = _register_names()

_ARGUMENT = re.compile(r"(?:(?P<sign>-)?(?P<size>\d+)@)?(?P<operand>\S+)")
_MEMORY = re.compile(r"(?P<displacement>[^()]*)\(%(?P<register>\w+)\)")
_SYMBOL_NAME = re.compile(r"[A-Za-z_.][\w.$@]*")


@dataclass(frozen=True)
class UsdtArgument:
    """One parsed argument of a probe site.

    >>> parse_argument("-4@-40(%rbp)")
    UsdtArgument(text='-4@-40(%rbp)', size=4, signed=True, kind=<ArgKind.DEREF: 3>, \
register='bp', offset=-40, symbol=None)
    """

    text: str
    size: int
    signed: bool
    kind: ArgKind
    register: str | None = None
    offset: int = 0             # the constant, or the displacement
    symbol: str | None = None   # for ABS: the symbol `offset` is added to

    @property
    def supported(self) -> bool:
        """True when BPF can read this argument."""
        return self.kind is not ArgKind.NONE

    @property
    def pointer_sized(self) -> bool:
        """True for an unsigned 8-byte value read at run time: maybe a char *."""
        return self.size == 8 and not self.signed and self.kind is not ArgKind.CONST


def parse_argument(text: str) -> UsdtArgument:
    """Parse one `[-]SIZE@OPERAND`; an unsupported operand gets kind NONE.

    >>> [(a.kind.name, a.size, a.signed, a.register, a.offset, a.symbol)
    ...  for a in map(parse_argument, ["-4@%eax", "8@%r12", "4@$5", "1@%dil",
    ...                                "-4@40+Stats(%rip)", "8@(%rax,%rbx,8)"])]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('REG', 4, True, 'ax', 0, None), ('REG', 8, False, 'r12', 0, None),
     ('CONST', 4, False, None, 5, None), ('REG', 1, False, 'di', 0, None),
     ('ABS', 4, True, None, 40, 'Stats'), ('NONE', 8, False, None, 0, None)]
    """
    match = _ARGUMENT.fullmatch(text)
    if match is None:
        return UsdtArgument(text, 8, False, ArgKind.NONE)
    size = int(match["size"] or 8)
    signed = bool(match["sign"])
    operand = match["operand"]
    unsupported = UsdtArgument(text, size if size in (1, 2, 4, 8) else 8, signed,
                               ArgKind.NONE)
    if size not in (1, 2, 4, 8):
        return unsupported
    if operand.startswith("$"):
        try:
            value = int(operand[1:], 0)
        except ValueError:
            return unsupported
        return UsdtArgument(text, size, signed, ArgKind.CONST, offset=value)
    if operand.startswith("%"):
        field = REGISTERS.get(operand[1:])
        if field is None or field == "ip":
            return unsupported
        return UsdtArgument(text, size, signed, ArgKind.REG, register=field)
    memory = _MEMORY.fullmatch(operand)
    if memory is None:
        return unsupported
    symbol, offset = _displacement(memory["displacement"])
    if offset is None:
        return unsupported
    field = REGISTERS.get(memory["register"])
    if field == "ip":
        if symbol is None:      # relative to an instruction we cannot see
            return unsupported
        return UsdtArgument(text, size, signed, ArgKind.ABS, offset=offset,
                            symbol=symbol)
    if field is None or symbol is not None:
        return unsupported
    return UsdtArgument(text, size, signed, ArgKind.DEREF, register=field,
                        offset=offset)


def _displacement(text: str) -> tuple[str | None, int | None]:
    """(symbol, offset) of `40+sym`, `sym+40`, `sym-8`, `-40`, `sym` or ``."""
    symbol: str | None = None
    offset = 0
    for term in re.findall(r"[-+]?[^-+]+", text):
        number = term.lstrip("+")
        try:
            offset += int(number, 0)
            continue
        except ValueError:
            pass
        if symbol is not None or term.startswith("-") or \
                not _SYMBOL_NAME.fullmatch(number):
            return None, None
        symbol = number
    return symbol, offset


def parse_arguments(text: str) -> list[UsdtArgument]:
    """Parse a note's argument string (space-separated arguments).

    >>> [a.text for a in parse_arguments("8@%rbp 8@%r12 -4@%eax")]
    ['8@%rbp', '8@%r12', '-4@%eax']
    >>> parse_arguments("")
    []
    """
    return [parse_argument(item) for item in text.split()]


def parse_formats(text: str) -> tuple[ArgFormat, ...]:
    """Parse a format hint such as "s,s,d" (one letter per argument).

    >>> [f.name for f in parse_formats("s,,x")]
    ['STRING', 'AUTO', 'HEX']
    """
    result = []
    for letter in text.split(","):
        result.append(ArgFormat(letter) if letter else ArgFormat.AUTO)
    if len(result) > MAX_ARGS:
        raise ValueError(f"at most {MAX_ARGS} argument formats")
    return tuple(result)


def effective_format(argument: UsdtArgument, hint: ArgFormat) -> ArgFormat:
    """The format an argument is shown in: the hint, or else by its type.

    >>> effective_format(parse_argument("-4@%eax"), ArgFormat.AUTO).name
    'SIGNED'
    >>> effective_format(parse_argument("8@%rbp"), ArgFormat.AUTO).name
    'AUTO'
    """
    if hint is not ArgFormat.AUTO:
        return hint
    if argument.pointer_sized:
        return ArgFormat.AUTO
    return ArgFormat.SIGNED if argument.signed else ArgFormat.UNSIGNED


def fetches_string(argument: UsdtArgument, fmt: ArgFormat) -> bool:
    """True when BPF copies the string `argument` points to (and sends it).

    >>> fetches_string(parse_argument("8@%rbp"), ArgFormat.AUTO)
    True
    >>> fetches_string(parse_argument("8@%rbp"), ArgFormat.HEX)
    False
    """
    return argument.supported and fmt in (ArgFormat.AUTO, ArgFormat.STRING)


SymbolResolver = Callable[[str], int | None]


def lower(argument: UsdtArgument, fmt: ArgFormat, spec: Any, bias: int,
          resolve: SymbolResolver) -> None:
    """Fill `spec` (a ctypes struct usdt_arg_spec) to read `argument` in a
    process where the file is loaded at `bias`; a symbol that cannot be
    resolved leaves the argument unsupported."""
    kind = argument.kind
    value = argument.offset
    if kind is ArgKind.ABS:
        address = resolve(argument.symbol or "")
        if address is None:
            kind = ArgKind.NONE
        else:
            value = (bias + address + argument.offset) & (2**64 - 1)
    spec.kind = int(kind)
    spec.size = argument.size
    spec.is_signed = int(argument.signed)
    spec.reg_offset = PT_REGS_OFFSETS.get(argument.register or "", 0)
    spec.value = _signed64(value)
    spec.fetch_string = int(kind is not ArgKind.NONE and fetches_string(
        argument, fmt))


def decode_value(argument: UsdtArgument, fmt: ArgFormat, raw: int,
                 unreadable: bool, string: bytes | None,
                 string_length: int) -> Arg:
    """The value of one argument as BPF read it.

    `raw` is the 64-bit value; `string`/`string_length` the bytes BPF copied
    from where it points (length with the NUL; negative: unreadable). None
    stands for unreadable. AUTO shows text where the value points to some,
    else the number.

    >>> arg = parse_argument("8@%rbp")
    >>> decode_value(arg, ArgFormat.AUTO, 0x7f00, False, b"work\\0", 5)
    'work'
    >>> decode_value(arg, ArgFormat.AUTO, 0x7f00, False, b"\\x01\\x02\\0", 3)
    32512
    >>> decode_value(parse_argument("-4@%eax"), ArgFormat.SIGNED, 2**64 - 3,
    ...              False, None, 0)
    -3
    """
    if unreadable or not argument.supported:
        return None
    if fmt is ArgFormat.SIGNED:
        return raw - (1 << 64) if raw >= 1 << 63 else raw
    if fmt in (ArgFormat.UNSIGNED, ArgFormat.HEX):
        return raw
    if fmt is ArgFormat.STRING:
        if raw == 0 or string is None or string_length <= 0:
            return None
        return string[: string_length - 1].decode("utf-8", "replace")
    text = _text(string, string_length) if raw else None
    return raw if text is None else text


def _text(string: bytes | None, length: int) -> str | None:
    """The copied bytes as text if they look like a C string of text."""
    if string is None or length <= 1:
        return None
    try:
        text = string[: length - 1].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if all(char.isprintable() or char in "\t\n" for char in text):
        return text
    return None


def format_value(value: Arg, fmt: ArgFormat) -> str:
    """One argument in a message: strings quoted, HEX and pointers in hex.

    >>> [format_value(v, f) for v, f in [("a b", ArgFormat.AUTO),
    ...     (255, ArgFormat.HEX), (4096, ArgFormat.AUTO), (None, ArgFormat.SIGNED),
    ...     (-3, ArgFormat.SIGNED)]]
    ['"a b"', '0xff', '0x1000', '<unreadable>', '-3']
    """
    if value is None:
        return "<unreadable>"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int) and fmt in (ArgFormat.HEX, ArgFormat.AUTO):
        return hex(value)
    return str(value)


def _signed64(value: int) -> int:
    value &= 2**64 - 1
    return value - (1 << 64) if value >= 1 << 63 else value


# --------------------------------------------------------------------------
# Symbols, for sym(%rip) operands

_SHT_SYMTAB, _SHT_DYNSYM = 2, 11
_ELF_SYMBOL = struct.Struct("<IBBHQQ")  # name, info, other, section, value, size
_symbol_cache: dict[tuple[int, int, int], dict[str, int]] = {}


def symbol_resolver(path: str) -> SymbolResolver:
    """A function giving the link-time address of a symbol of `path`
    (from .symtab, else .dynsym), or None; read once per file.

    >>> resolve = symbol_resolver("/usr/bin/python3.11")
    >>> resolve("Py_Initialize") is not None, resolve("no such symbol")
    (True, None)
    """
    table: dict[str, int] | None = None

    def resolve(name: str) -> int | None:
        nonlocal table
        if table is None:
            table = _symbols(path)
        return table.get(name)

    return resolve


def _symbols(path: str) -> dict[str, int]:
    try:
        with os.fdopen(open_regular(path), "rb") as file:
            stat = os.fstat(file.fileno())
            key = (stat.st_dev, stat.st_ino, stat.st_mtime_ns)
            if key not in _symbol_cache:
                _symbol_cache[key] = _read_symbols(ElfFile(file))
            return _symbol_cache[key]
    except (OSError, ElfFormatError, struct.error):
        return {}


def _read_symbols(elf: ElfFile) -> dict[str, int]:
    """Defined symbols with an address, of .dynsym then .symtab (which wins)."""
    found: dict[str, int] = {}
    if not elf.wide or elf.order != "<":
        return found
    for table_name, kind, strings_name in (
            (b".dynsym", _SHT_DYNSYM, b".dynstr"),
            (b".symtab", _SHT_SYMTAB, b".strtab")):
        table = elf.section(table_name)
        strings = elf.section(strings_name)
        if table is None or strings is None or table.type != kind:
            continue
        names = elf.read(strings.offset, strings.size)
        data = elf.read(table.offset, table.size)
        for at in range(0, len(data) - _ELF_SYMBOL.size + 1, _ELF_SYMBOL.size):
            name_at, _, _, section, value, _ = _ELF_SYMBOL.unpack_from(data, at)
            if section == 0 or value == 0:
                continue
            end = names.find(b"\0", name_at)
            found[names[name_at:end].decode("utf-8", "replace")] = value
    return found
