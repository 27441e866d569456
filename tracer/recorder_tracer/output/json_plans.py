"""JSON lines at batch speed: one compiled line plan per kind of entry.

`recorder trace --json` renders every record the same way (output/jsonl.py:
a Record, a dict, json.dumps), ~20 us a record in Python. Most entries of
one process, topic, format and CPU differ only in their timestamp, thread
and integer arguments, so a plan compiled once for them (an f-string of
their constant fields, JSON-encoded, and one expression per varying field)
renders each with one call: `JsonPlans.plan()` builds it from an entry in
the layout of abi.ENTRY, unpacked into one flat tuple.

Only what a plan renders exactly as the writer does gets one: a format
whose conversions are plain integer ones (%d %i %u %o %x %X, any length
modifier, no flags, width or precision, each with its argument), with every
argument an integer or pointer; anything else (doubles, strings, `%5d`,
`<missing>`) keeps the Record path. The session checks each new plan on its
first entry against the writer's own line, and drops a plan that differs.
"""

from __future__ import annotations

import itertools
import json
import re
import struct
from collections.abc import Callable
from operator import itemgetter
from typing import Any, Protocol

from recorder_tracer.abi import ARG_INT, ARG_POINTER, ENTRY, ENTRY_SPAN_END, MAX_ARGS
from recorder_tracer.decode.record import Record
from recorder_tracer.decode.render import _INT_BITS, _SPEC
from recorder_tracer.output.jsonl import JsonLinesWriter, _dumps, record_json
from recorder_tracer.selftrace import SESSION
from recorder_tracer.target.notes import RECORDER_PROVIDER
from recorder_tracer.terminal import json_escaped

Entry = tuple[int, ...]


class LinePlan(Protocol):
    """A compiled plan: the line of one entry, and `chunk`, the (timestamp,
    line) pairs of a list of entries in one comprehension (no call per
    entry)."""

    chunk: Callable[[list[Entry]], list[tuple[int, Any]]]
    unpacked: Callable[[memoryview], list[tuple[int, Any]]]

    def __call__(self, t: Entry) -> Any: ...


EntryRecord = Callable[[int, int, bytes, Entry], Record]   # cpu, pid, comm
# A process chooses its entries' kinds (it writes its own format addresses):
# a kind gets a plan only when seen a second time (one-off kinds stay on the
# Record path, not compiled), and all kinds known are forgotten past these.
KINDS_KEPT = 4096
CONTEXTS_KEPT = 1024
_SEEN_ONCE = object()
_LINE = itemgetter(1)
_VALUE_NAMES = itertools.count()    # the names of values shown twice
ARGS_AT = 10            # the first argument's index in an ENTRY tuple
_SPECS = {"d": "", "i": "", "u": "", "o": "o", "x": "x", "X": "X"}
# A plan's parts: constant text, or (expression of `t`, format spec)
Parts = list["str | tuple[str, str]"]


def _quoted(text: str) -> str:
    """`text` as the writer's JSON has it, quoted."""
    return json_escaped(json.dumps(text, ensure_ascii=False))


def _inner(text: str) -> str:
    """Part of a JSON string: escaped as the writer escapes it, unquoted."""
    return json_escaped(json.dumps(text, ensure_ascii=False)[1:-1])


def _signed64(index: int) -> str:
    value = f"t[{ARGS_AT + index}]"
    return (f"({value} - 18446744073709551616 if {value} >= 9223372036854775808"
            f" else {value})")


def _converted(index: int, conversion: str, length: str) -> str:
    """The expression of a printf integer conversion of argument `index`,
    as decode/render.py's _convert gives it (wrapped to its length)."""
    bits = _INT_BITS.get(length, 64)
    mask, half = (1 << bits) - 1, 1 << (bits - 1)
    value = f"t[{ARGS_AT + index}]"
    if bits == 64:      # the slot as it is (a u64): no mask, one comparison
        return _signed64(index) if conversion in "di" else value
    if conversion in "di":
        return f"((({value} & {mask}) ^ {half}) - {half})"
    return f"({value} & {mask})"


def message_parts(fmt: str, nargs: int, escape: Callable[[str], str] = _inner
                  ) -> Parts | None:
    """The message's parts (literal text through `escape`); None when the
    format has more than plain integer conversions."""
    parts: Parts = []
    next_arg = position = 0
    while True:
        start = fmt.find("%", position)
        if start < 0:
            parts.append(escape(fmt[position:]))
            return parts
        parts.append(escape(fmt[position:start]))
        match = _SPEC.match(fmt, start)
        assert match is not None    # the pattern matches any "%"
        position = match.end()
        if (match["flags"] or match["width"] is not None
                or match["precision"] is not None):
            return None
        conversion = match["conversion"]
        if conversion == "%":
            parts.append("%")
            continue
        if conversion not in _SPECS or next_arg >= nargs:
            return None
        parts.append((_converted(next_arg, conversion, match["length"]),
                      _SPECS[conversion]))
        next_arg += 1


def fstring(parts: Parts, constants: dict[str, Any]) -> str:
    """The source of an f-string of an entry tuple `t` making the text of
    `parts`. Only indices and our own names reach the code: the texts a
    process chose go to `constants`, which the code reads by name. A value
    shown twice (a message's argument and the same in "args") is made
    text once, kept by name (`:=`) where it first shows."""
    fields = [part for part in parts if not isinstance(part, str)]
    named: dict[tuple[str, str], str] = {}
    code: list[str] = []
    text = ""
    for part in [*parts, None]:
        if isinstance(part, str):
            text += part
            continue
        if text:
            name = f"_k{len(constants)}"
            constants[name] = text
            code.append("{" + name + "}")
            text = ""
        if part is None:
            continue
        expression, spec = part
        field = "{" + expression + (":" + spec if spec else "") + "}"
        if part in named:
            code.append("{" + named[part] + "}")
        elif fields.count(part) > 1:
            named[part] = f"_v{next(_VALUE_NAMES)}"
            code.append("{(" + named[part] + ' := f"' + field + '")}')
        else:
            code.append(field)
    return "f'" + "".join(code) + "'"


def compile_plan(parts: Parts) -> LinePlan:
    """One function of an entry tuple `t` making the line of `parts`: an
    f-string (about twice as fast as %-formatting here)."""
    constants: dict[str, Any] = {}
    return compile_lines(fstring(parts, constants), constants)


def compile_lines(code: str, constants: dict[str, Any]) -> LinePlan:
    """The plan of `code`, an expression of an entry `t` (fstring()'s and
    our own, reading `constants` by name), with its `chunk`, and its
    `unpacked`: the same pairs from a chunk's bytes, unpacking only the
    fields `code` reads (a struct of them, `t` renumbered). Those two are
    compiled when first called: a kind never seen in a chunk of its own
    costs one compile, not three."""
    plan = eval("lambda t: " + code, constants)

    def chunk() -> Any:
        return eval(f"lambda entries: [(t[0], {code}) for t in entries]", constants)

    def unpacked() -> Any:
        used = sorted({0, *map(int, _FIELD_READ.findall(code))})
        layout, at = "<", 0
        for field in used:
            offset, size, letter = _ENTRY_FIELDS[field]
            layout += (f"{offset - at}x" if offset > at else "") + letter
            at = offset + size
        constants["_fields"] = struct.Struct(f"{layout}{ENTRY.size - at}x")
        narrow = _FIELD_READ.sub(lambda read: f"t[{used.index(int(read[1]))}]",
                                 code)
        return eval(f"lambda data: [(t[0], {narrow}) for t in "
                    "_fields.iter_unpack(data)]", constants)
    _on_first_call(plan, "chunk", chunk)
    _on_first_call(plan, "unpacked", unpacked)
    return plan  # type: ignore[no-any-return]


def _on_first_call(plan: Any, name: str, make: Callable[[], Any]) -> None:
    """`plan.name`, made by `make()` when first called."""
    def first(argument: Any) -> Any:
        made = make()
        setattr(plan, name, made)
        return made(argument)
    setattr(plan, name, first)


def _entry_fields() -> list[tuple[int, int, str]]:
    """(offset, size, struct letter) of each field of ENTRY."""
    fields, offset = [], 0
    for count, letter in re.findall(r"(\d*)([a-zA-Z])", ENTRY.format):
        for _ in range(int(count or 1)):
            size = struct.calcsize("<" + letter)
            fields.append((offset, size, letter))
            offset += size
    return fields


_ENTRY_FIELDS = _entry_fields()
_FIELD_READ = re.compile(r"\bt\[(\d+)\]")    # a plan's read of a field


def integer_argument_kinds(entry: Entry) -> list[int] | None:
    """The kinds of `entry`'s arguments; None when one is not an integer or
    a pointer (a plan renders only those)."""
    kinds = [(entry[4] >> (2 * i)) & 3 for i in range(min(entry[6], MAX_ARGS))]
    return kinds if all(k in (ARG_INT, ARG_POINTER) for k in kinds) else None


class JsonPlans:
    """Line plans and the line sink for a JSON lines writer."""

    def __init__(self, writer: JsonLinesWriter) -> None:
        self.writer = writer
        self.built = 0          # plans compiled
        self.refused = 0        # kinds of entry left to the Record path

    def plan(self, entry: tuple[int, ...], *, pid: int, comm: str, cpu: int,
             topic: str, where: str, fmt: str,
             ns_pid: int | None) -> LinePlan | None:
        """The plan for entries like `entry` (same format, location,
        argument kinds, flags) of this process, comm, topic and CPU."""
        nargs, flags = min(entry[6], MAX_ARGS), entry[7]
        kinds = integer_argument_kinds(entry)
        message = message_parts(fmt, nargs)
        if message is None or kinds is None:
            self.refused += 1
            return None
        args: Parts = [(_signed64(i) if kind == ARG_INT else f"t[{ARGS_AT + i}]", "")
                       for i, kind in enumerate(kinds)]
        parts: Parts = [
            '{"type": "record", "ts": ', ("t[0]", ""), f', "pid": {pid}, "tid": ',
            ("t[2]", ""), ', "comm": ' + _quoted(comm) + f', "cpu": {cpu}, '
            '"provider": ' + _quoted(RECORDER_PROVIDER) + ', "topic": '
            + _quoted(topic) + ', "where": ' + _quoted(where) + ', "message": "',
            *message, '", "args": [']
        for number, arg in enumerate(args):
            parts += [", "] * bool(number) + [arg]
        parts.append(f'], "flags": {flags}')
        if ns_pid is not None:
            parts.append(f', "ns_pid": {ns_pid}')
        if flags & ENTRY_SPAN_END and nargs:
            parts += [', "duration_ns": ', args[0]]
        parts.append("}\n")
        self.built += 1
        return compile_plan(parts)

    @staticmethod
    def render(record: Record) -> str:
        """The writer's own line for `record` (what a plan must equal)."""
        return _dumps(record_json(record)) + "\n"

    def write_lines(self, lines: list[tuple[int, str]]) -> None:
        """Write rendered (timestamp, line) pairs at once (one flush, when
        flushing)."""
        self.writer.write_lines("".join(map(_LINE, lines)), len(lines))


class ChunkLines:
    """A batch stream's chunks (kernel/batch_stream.py `on_chunk`) to
    `emit_many` (`emit_lines` where all are lines): each entry as a line
    by its plan (`plans`: JsonPlans, output/text_plans.py's TextPlans or
    output/chrome_plans.py's ChromePlans) where one fits, as a Record
    (`entry_record`) where none does (every one without `plans`).
    `process_of(pid)` gives the process (session/armed.py) whose image and
    topics name its entries, None to take the Record path for the chunk."""

    def __init__(self, plans: Any,
                 emit_many: Callable[[list[tuple[int, Any]]], None],
                 process_of: Callable[[int], Any], entry_record: EntryRecord,
                 emit_lines: Callable[[list[tuple[int, Any]]], None] | None = None
                 ) -> None:
        self.plans = plans
        self.emit_many = emit_many
        self.emit_lines = emit_lines or emit_many   # lines only
        self.process_of = process_of
        self.entry_record = entry_record
        # (pid, comm, cpu) -> (process, image, plans by kind, the image's
        # strings generation: its texts the plans were made of)
        self._contexts: dict[tuple[int, bytes, int], tuple[Any, Any, dict, int]] = {}
        self._kinds = 0     # kinds known, in all contexts

    def on_chunk(self, cpu: int, pid: int, comm: bytes, entries: list[Entry] | None,
                 one_kind: bool = False, data: memoryview | None = None) -> None:
        """Render `entries` (None: unpacked from `data`, the chunk's
        entries as bytes, where a plan does not read them there;
        `one_kind`: all of one kind, known)."""
        process = self.process_of(pid) if self.plans is not None else None
        if entries is None:
            assert data is not None
            if process is not None and one_kind:
                plan = self._plans(process, pid, comm, cpu).get(
                    ENTRY.unpack_from(data)[3:10])
                if plan is not None and plan is not _SEEN_ONCE:
                    self.emit_lines(plan.unpacked(data))
                    return
            entries = list(ENTRY.iter_unpack(data))
        if process is None:
            self.emit_many([(entry[0], self.entry_record(cpu, pid, comm, entry))
                            for entry in entries])
            return
        plans = self._plans(process, pid, comm, cpu)
        kind = entries[0][3:10]
        plan = plans.get(kind)
        if (plan is not None and plan is not _SEEN_ONCE
                and (one_kind or all(entry[3:10] == kind for entry in entries))):
            # The common chunk: one kind of entry throughout.
            self.emit_lines(plan.chunk(entries))
            return
        items: list[tuple[int, Any]] = []
        for entry in entries:
            # Its kind: topic, argument kinds, CPU, count, flags, format
            # and location addresses.
            kind = entry[3:10]
            plan = plans.get(kind)
            if plan is _SEEN_ONCE:
                plan = plans[kind] = self._new_plan(process, cpu, pid, comm, entry)
            elif plan is None and kind not in plans:
                plans[kind] = _SEEN_ONCE
                self._kinds += 1
            items.append((entry[0], plan(entry) if plan is not None
                          else self.entry_record(cpu, pid, comm, entry)))
        self.emit_many(items)

    def kinds_held(self) -> int:
        """The kinds of entry known now (plans, and kinds seen once)."""
        return sum(len(context[2]) for context in self._contexts.values())

    def _plans(self, process: Any, pid: int, comm: bytes, cpu: int) -> dict:
        """The plans (by kind) of this process image, comm and CPU."""
        # At every chunk: the process writes its kinds, one context can
        # hold ever-new ones (bounded by KINDS_KEPT and one chunk's entries).
        if self._kinds >= KINDS_KEPT:
            self._contexts.clear()
            self._kinds = 0
        key = (pid, comm, cpu)
        context = self._contexts.get(key)
        if (context is None or context[0] is not process
                or context[1] is not process.image
                or context[3] != process.image.strings_generation):
            if len(self._contexts) >= CONTEXTS_KEPT:
                self._contexts.clear()
                self._kinds = 0
            context = self._contexts[key] = (process, process.image, {},
                                             process.image.strings_generation)
        return context[2]

    def _new_plan(self, process: Any, cpu: int, pid: int, comm: bytes,
                  entry: Entry) -> LinePlan | None:
        """The line plan of `entry`'s kind, checked on it against the
        writer's own line (None: Records for this kind)."""
        record = self.entry_record(cpu, pid, comm, entry)
        fmt = process.image.string(entry[8])
        plan = None
        if fmt is not None and entry[3] in process.topics:
            plan = self.plans.plan(entry, pid=pid, comm=record.comm, cpu=cpu,
                                   topic=record.topic, where=record.where,
                                   fmt=fmt, ns_pid=record.ns_pid)
        if plan is not None and plan(entry) != self.plans.render(record):
            SESSION.record("json plans: a plan of pid %d differs from its "
                           "record's line: dropped", pid)
            plan = None
        return plan
