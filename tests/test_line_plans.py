"""`recorder trace --batch` renders entries by line plans
(output/json_plans.py, output/text_plans.py): every line a plan writes is
the line the JSON writer (or the text printer) writes for the same record,
byte for byte; what no plan fits keeps the Record path; lines and records
leave the reorder buffer in time order.
"""

from __future__ import annotations

import ctypes
import io
import json
from pathlib import Path

import pytest
from helpers.plans import INTEGER_FORMATS, VALUES, OwnProcess, entry
from helpers.tracer import Workload

from recorder_tracer.abi import ENTRY, ENTRY_SPAN_END
from recorder_tracer.decode.chunk_kind import chunk_of_one_kind
from recorder_tracer.decode.entry import RawEntry, entry_record
from recorder_tracer.decode.record import Record
from recorder_tracer.decode.reorder import ReorderBuffer
from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.output.chrome import ChromeTraceWriter
from recorder_tracer.output.chrome_plans import ChromePlans
from recorder_tracer.output.json_plans import KINDS_KEPT, ChunkLines, JsonPlans
from recorder_tracer.output.jsonl import JsonLinesWriter
from recorder_tracer.output.sinks import line_plans_for, open_sink
from recorder_tracer.output.text import TextPrinter, TimeMode, format_record
from recorder_tracer.output.text_plans import TextPlans
from recorder_tracer.session.loop import TraceOptions, TraceSession
from recorder_tracer.target.memory import STRING_CACHE_MAX


def writer_line(raw: tuple[int, ...], fmt: str, *, comm: str, topic: str,
                where: str, ns_pid: int | None = None) -> str:
    """The JSON writer's line for `raw`, decoded as the session decodes."""
    texts = {raw[8]: fmt, raw[9]: where}
    record = entry_record(RawEntry(*raw[:10], raw[10:22]), pid=77, comm=comm,
                          topic=topic, text=texts.get, string=lambda a: None,
                          cpu=1, ns_pid=ns_pid)
    return JsonPlans.render(record)


def plan_line(raw: tuple[int, ...], fmt: str, *, comm: str = "app",
              topic: str = "net", where: str = "a.c:3",
              ns_pid: int | None = None) -> str | None:
    plans = JsonPlans(JsonLinesWriter(io.StringIO()))
    plan = plans.plan(raw, pid=77, comm=comm, cpu=1, topic=topic, where=where,
                      fmt=fmt, ns_pid=ns_pid)
    return None if plan is None else plan(raw)


@pytest.mark.parametrize("fmt", INTEGER_FORMATS)
def test_a_plan_writes_the_writers_line_for_integer_formats(fmt: str) -> None:
    conversions = fmt.replace("%%", "").count("%")
    for first in VALUES:
        for second in (0, 2**64 - 1, 3):
            values = [*[first, second][:conversions], first ^ 0x55]
            for kinds in (0, 0b11 << (2 * conversions)):    # int, then pointer
                raw = entry(0x1000, values, arg_types=kinds)
                expected = writer_line(raw, fmt, comm="app", topic="net",
                                       where="a.c:3")
                assert plan_line(raw, fmt) == expected, (fmt, values)


def text_lines(raw: tuple[int, ...], fmt: str, **names: str) -> tuple[str, str | None]:
    """format_record's line for `raw` (TIME relative to itself) and the
    text plan's, TIME rendered as write_lines renders it."""
    texts = {raw[8]: fmt, raw[9]: names["where"]}
    record = entry_record(RawEntry(*raw[:10], raw[10:22]), pid=77,
                          comm=names["comm"], topic=names["topic"],
                          text=texts.get, string=lambda a: None, cpu=1)
    stream = io.StringIO()
    printer = TextPrinter(stream, header=False)
    plans = TextPlans(printer)
    plan = plans.plan(raw, pid=77, cpu=1, fmt=fmt, ns_pid=None, **names)
    if plan is None:
        return format_record(record, origin_ns=raw[0]) + "\n", None
    plans.write_lines([(raw[0], plan(raw))])
    return format_record(record, origin_ns=raw[0]) + "\n", stream.getvalue()


@pytest.mark.parametrize("fmt", [*INTEGER_FORMATS, "ends in a newline %d\n",
                                 "two\n\n", "%d\n%d\n"])
def test_a_text_plan_prints_the_printers_line(fmt: str) -> None:
    conversions = fmt.replace("%%", "").count("%")
    for first in VALUES:
        values = [first, 2**64 - 1][:conversions]
        expected, line = text_lines(entry(0x1000, values), fmt, comm="app",
                                    topic="net", where="src/a.c:3")
        assert line == expected, (fmt, values)


@pytest.mark.parametrize("mode", list(TimeMode))
def test_text_lines_show_time_as_the_printer_does(mode: TimeMode) -> None:
    """A run's TIME column, relative times before the origin (a late
    record's) too, in every time mode."""
    raw, fmt = entry(0x1000, [5]), "v=%d"
    texts = {raw[8]: fmt, raw[9]: "w.c:1"}
    origin = 5_000_000_000
    for times in ([origin, origin + 1, origin + 999_999_999, origin + 10**12],
                  [origin - 2_000_000_001, origin - 999, origin, origin + 1_500]):
        stream = io.StringIO()
        printer = TextPrinter(stream, time_mode=mode, origin_ns=origin, header=False)
        plans = TextPlans(printer)
        plan = plans.plan(raw, pid=77, comm="app", cpu=1, topic="net",
                          where="w.c:1", fmt=fmt, ns_pid=None)
        assert plan is not None
        plans.write_lines([(ts, plan(raw)) for ts in times])
        records = [entry_record(RawEntry(ts, *raw[1:10], raw[10:22]), pid=77,
                                comm="app", topic="net", text=texts.get,
                                string=lambda a: None, cpu=1) for ts in times]
        assert stream.getvalue() == "".join(
            format_record(r, mode, origin, printer.wall_offset_ns) + "\n"
            for r in records)


def test_a_text_plan_cuts_and_escapes_columns_as_the_printer_does() -> None:
    names = {"comm": "a%d\x1b[2J\u202e", "topic": "function__entry_of_a_long_name",
             "where": "/very/long/path/to/some/source\x9b.c:1234"}
    expected, line = text_lines(entry(0x1000, [5]), "v=%d", **names)
    assert line == expected


def test_a_plan_escapes_names_a_process_chose_as_the_writer_does() -> None:
    names = {"comm": 'a"%d\\\x1b[2J', "topic": "t%s\u2028", "where": "w\u202e%%.c:1"}
    raw = entry(0x1000, [5])
    assert plan_line(raw, "v=%d", **names) == writer_line(raw, "v=%d", **names)


def test_a_plan_writes_a_span_ends_duration_and_the_namespace_pid() -> None:
    raw = entry(0x1000, [2**64 - 5, 9], flags=ENTRY_SPAN_END)
    expected = writer_line(raw, "end %d", comm="c", topic="t", where="w", ns_pid=3)
    assert '"duration_ns": -5' in expected and '"ns_pid": 3' in expected
    assert plan_line(raw, "end %d", comm="c", topic="t", where="w",
                     ns_pid=3) == expected


@pytest.mark.parametrize(("fmt", "values", "arg_types"), [
    ("%5d", [1], 0), ("%-d", [1], 0), ("%.3d", [1], 0), ("%*d", [3, 1], 0),
    ("%s", [0x3000], 0b10), ("%f", [0], 0b01), ("%d %d", [1], 0),
    ("%d", [1, 0], 0b0100), ("%c", [65], 0), ("%p", [1], 0), ("%k", [1], 0),
])
def test_no_plan_for_what_only_the_record_path_renders(fmt: str, values: list[int],
                                                       arg_types: int) -> None:
    assert plan_line(entry(0x1000, values, arg_types=arg_types), fmt) is None


def test_lines_and_records_leave_the_reorder_buffer_in_time_order() -> None:
    out: list[object] = []
    buffer = ReorderBuffer(out.append, lines=lambda lines: out.append(
        [line for _ts, line in lines]))

    def record(ts: int) -> Record:
        return Record(ts=ts, pid=1, tid=1, comm="a", topic="t", where="?",
                      message=str(ts))
    buffer.push_many([(10, "a10"), (30, "a30"), (50, "a50")])
    buffer.push_many([(20, record(20)), (30, "b30"), (40, "b40")])
    buffer.push(record(5))
    buffer.flush(until_ns=30)
    assert [item if isinstance(item, list) else item.ts for item in out] == [
        5, ["a10"], 20, ["a30", "b30"]]
    out.clear()
    buffer.flush_all()
    assert out == [["b40", "a50"]]


def test_runs_of_lines_leave_whole_and_records_among_them_in_order() -> None:
    """push_lines() runs newer than every Record leave in one call as
    they are; a Record pushed among them (late, too) still leaves in its
    place."""
    out: list[object] = []
    buffer = ReorderBuffer(out.append, lines=lambda lines: out.append(lines))

    def record(ts: int) -> Record:
        return Record(ts=ts, pid=1, tid=1, comm="a", topic="t", where="?",
                      message=str(ts))
    run = [(10, "a10"), (20, "a20")]
    buffer.push_lines(run)
    buffer.flush(until_ns=20)
    assert out == [run]
    buffer.push_lines([(30, "a30"), (50, "a50")])
    buffer.push(record(40))
    buffer.push(record(5))          # late: older than what left
    buffer.push_lines([(60, "a60")])
    buffer.flush_all()
    assert [item if isinstance(item, list) else item.ts for item in out[1:]] == [
        5, [(30, "a30")], 40, [(50, "a50"), (60, "a60")]]
    assert buffer.late == 1
    buffer.push(record(70))
    buffer.push_lines([(70, "b70")])
    buffer.flush_all()
    assert out[5:] == [record(70), [(70, "b70")]]


@pytest.mark.parametrize("fmt", ["load %ld %ld", "%d", "no argument",
                                 " ".join(["%x"] * 12)])
def test_a_plan_reads_a_chunks_bytes_as_its_entries(fmt: str) -> None:
    """`unpacked` (the fields a plan reads, from the chunk's bytes) makes
    the pairs `chunk` makes of the unpacked entries, for every sink."""
    nargs = fmt.count("%")
    raws = [entry(0x1000, [(i * 7919 + a) % 2**64 for a in range(nargs)],
                  flags=ENTRY_SPAN_END if nargs else 0) for i in range(5)]
    raws = [(2**63 + i, *raw[1:]) for i, raw in enumerate(raws)]
    data = memoryview(b"".join(ENTRY.pack(*raw) for raw in raws))
    sinks = [JsonPlans(JsonLinesWriter(io.StringIO())),
             TextPlans(TextPrinter(io.StringIO())),
             ChromePlans(ChromeTraceWriter(io.StringIO()))]
    for plans in sinks:
        plan = plans.plan(raws[0], pid=77, comm="app", cpu=1, topic="net",
                          where="a.c:3", fmt=fmt, ns_pid=4)
        assert plan is not None
        assert plan.unpacked(data) == plan.chunk(raws) == [
            (raw[0], plan(raw)) for raw in raws]
        # Compiled at their first call, then called as they are.
        assert plan.unpacked.__name__ == plan.chunk.__name__ == "<lambda>"
        assert plan.unpacked(data) == plan.chunk(raws)


def test_chunks_left_in_their_bytes_render_as_unpacked_ones() -> None:
    """ChunkLines given a chunk's bytes (entries None, one kind) writes
    what it writes given the entries: the first as Records and lines, then
    by the plan from the bytes."""
    fmt = ctypes.create_string_buffer(b"n=%d")
    own = OwnProcess()
    pid, processes, record = own.pid, own.processes, own.record
    outs: list[list[tuple[int, object]]] = [[], []]
    plans = JsonPlans(JsonLinesWriter(io.StringIO()))
    by_entries = ChunkLines(plans, outs[0].extend, processes.get, record)
    by_bytes = ChunkLines(plans, outs[1].extend, processes.get, record)
    for number in range(3):
        raws = [(ts, *entry(ctypes.addressof(fmt), [ts])[1:])
                for ts in range(number * 4, number * 4 + 4)]
        by_entries.on_chunk(1, pid, b"me", raws, True)
        by_bytes.on_chunk(1, pid, b"me", None, True,
                          memoryview(b"".join(ENTRY.pack(*raw) for raw in raws)))
    assert outs[0] == outs[1]
    assert all(isinstance(item, str) for _ts, item in outs[1][1:])
    assert [json.loads(line)["args"] for _ts, line in outs[1][1:]] == [
        [ts] for ts in range(1, 12)]


@pytest.mark.parametrize("kind", ["text", "json", "chrome"])
def test_the_sink_recorder_trace_opens_gets_plans_writing_its_output(
        kind: str, tmp_path: Path) -> None:
    """line_plans_for (what `recorder trace` renders by in batch mode): text,
    --json and --chrome FILE each get their own plans, on the writer of the
    sink's output; a line written by plan is the Record path's there."""
    outputs = []
    for by_plan in (True, False):
        stream = io.StringIO()
        path = tmp_path / f"{by_plan}.json"
        sink = open_sink(stream, as_json=kind == "json",
                         chrome=str(path) if kind == "chrome" else None)
        writer = getattr(sink, "writer", sink)
        if hasattr(writer, "anchor"):
            writer.anchor = {"anchor": "fixed"}
        plans = line_plans_for(sink)
        assert type(plans) is {"text": TextPlans, "json": JsonPlans,
                               "chrome": ChromePlans}[kind]
        raw = entry(0x1000, [41, 2**64 - 1])
        record = entry_record(RawEntry(*raw[:10], raw[10:22]), pid=77, comm="app",
                              topic="net", text={0x1000: "v %d %lu",
                                                 0x2000: "a.c:3"}.get,
                              string=lambda a: None, cpu=1, ns_pid=None)
        if by_plan:
            plan = plans.plan(raw, pid=77, comm="app", cpu=1, topic="net",
                              where="a.c:3", fmt="v %d %lu", ns_pid=None)
            assert plan is not None
            plans.write_lines([(raw[0], plan(raw))])    # type: ignore[arg-type]
        else:
            sink.write(record)
        sink.close(None)
        outputs.append(path.read_text() if kind == "chrome" else stream.getvalue())
    assert outputs[0] == outputs[1]
    assert "v 41 18446744073709551615" in outputs[0]


def test_a_chunk_of_two_formats_writes_each_entrys_own_line() -> None:
    """Two formats of one topic in one chunk, both with plans: the chunk is
    told not of one kind from its bytes (as BatchStream._deliver_chunk
    tells it), and every line is its own entry's, the Record path's."""
    formats = [ctypes.create_string_buffer(b"first %d"),
               ctypes.create_string_buffer(b"second %d")]
    own = OwnProcess()
    pid, processes, record = own.pid, own.processes, own.record
    plans = JsonPlans(JsonLinesWriter(io.StringIO()))
    out: list[tuple[int, object]] = []
    chunks = ChunkLines(plans, out.extend, processes.get, record)
    raws = [(ts, *entry(ctypes.addressof(formats[ts % 2]), [ts])[1:])
            for ts in range(8)]
    chunks.on_chunk(1, pid, b"me", raws[:4])     # both kinds seen twice
    assert plans.built == 2
    data = b"".join(ENTRY.pack(*raw) for raw in raws[4:])
    one_kind = chunk_of_one_kind(data)
    assert not one_kind
    chunks.on_chunk(1, pid, b"me", list(ENTRY.iter_unpack(data)), one_kind,
                    memoryview(data))
    assert [line for _ts, line in out[4:]] == [
        JsonPlans.render(record(1, pid, b"me", raw)) for raw in raws[4:]]
    assert [json.loads(line)["message"] for _ts, line in out[4:]] == [
        "first 4", "second 5", "first 6", "second 7"]


def test_a_format_rewritten_then_read_again_is_the_plans_text_too() -> None:
    """A process rewrites the text at its format address, then makes the
    image's string cache clear (its size in one-off addresses read): the
    Record path reads the new text, and so do the plans (compiled again);
    as for a location read at last, after it was unreadable."""
    fmt = ctypes.create_string_buffer(b"old %d")
    junk = ctypes.create_string_buffer(STRING_CACHE_MAX + 8)
    own = OwnProcess()
    pid, process, processes, record = own.pid, own.process, own.processes, own.record
    plans = JsonPlans(JsonLinesWriter(io.StringIO()))
    out: list[tuple[int, object]] = []
    chunks = ChunkLines(plans, out.extend, processes.get, record)
    raw = entry(ctypes.addressof(fmt), [7])
    chunks.on_chunk(1, pid, b"me", [raw] * 3)
    assert plans.built == 1 and json.loads(out[-1][1])["message"] == "old 7"  # type: ignore[arg-type]
    fmt.value = b"new %d"
    for offset in range(STRING_CACHE_MAX):
        process.image.string(ctypes.addressof(junk) + offset)
    chunks.on_chunk(1, pid, b"me", [raw] * 3)
    lines = [item if isinstance(item, str) else JsonPlans.render(item)
             for _ts, item in out[3:]]
    assert lines == [JsonPlans.render(record(1, pid, b"me", raw))] * 3
    assert json.loads(lines[-1])["message"] == "new 7" and plans.built == 2
    # A location unreadable here, then told (BPF read it at the process's end).
    assert json.loads(lines[-1])["where"] == "?"
    process.image.remember(raw[9], "b.c:9")
    chunks.on_chunk(1, pid, b"me", [raw] * 3)
    lines = [item if isinstance(item, str) else JsonPlans.render(item)
             for _ts, item in out[6:]]
    assert lines == [JsonPlans.render(record(1, pid, b"me", raw))] * 3
    assert json.loads(lines[-1])["where"] == "b.c:9"


def test_a_kind_of_entry_seen_once_is_not_compiled() -> None:
    """A process writes its entries' format addresses: one-off kinds stay
    on the Record path, a kind seen again gets its plan, and the lines are
    the writer's either way. Formats are read from this process's memory."""
    formats = [ctypes.create_string_buffer(f"f{i} %d".encode()) for i in range(40)]
    own = OwnProcess()
    pid, processes, record = own.pid, own.processes, own.record
    plans = JsonPlans(JsonLinesWriter(io.StringIO()))
    out: list[tuple[int, object]] = []
    chunks = ChunkLines(plans, out.extend, processes.get, record)
    one_offs = [entry(ctypes.addressof(f), [i]) for i, f in enumerate(formats)]
    chunks.on_chunk(1, pid, b"me", one_offs)
    assert plans.built == 0 and all(isinstance(item, Record) for _ts, item in out)
    again = [entry(ctypes.addressof(formats[0]), [7])] * 3
    chunks.on_chunk(1, pid, b"me", again)
    assert plans.built == 1
    assert [item for _ts, item in out[40:]] == [JsonPlans.render(record(
        1, pid, b"me", again[0]))] * 3


def test_kinds_held_stay_bounded_in_one_context() -> None:
    """A process writes its entries' kind fields (here the entry's own
    CPU): ever-new kinds from one (pid, comm, cpu) context are forgotten
    past KINDS_KEPT, as across contexts; the lines stay the writer's."""
    fmt = ctypes.create_string_buffer(b"k %d")
    own = OwnProcess()
    pid, processes, record = own.pid, own.processes, own.record
    plans = JsonPlans(JsonLinesWriter(io.StringIO()))
    out: list[tuple[int, object]] = []
    chunks = ChunkLines(plans, out.extend, processes.get, record)
    base = entry(ctypes.addressof(fmt), [9])
    held = []
    for first in range(0, KINDS_KEPT + 1024, 64):
        chunks.on_chunk(1, pid, b"me", [(*base[:5], cpu, *base[6:])
                                        for cpu in range(first, first + 64)])
        held.append(chunks.kinds_held())
    assert max(held) <= KINDS_KEPT + 64 and held[-1] < KINDS_KEPT
    assert held[KINDS_KEPT // 64 - 1] == KINDS_KEPT     # all kept up to the bound
    assert len(out) == KINDS_KEPT + 1024 and plans.built == 0
    assert all(isinstance(item, Record) for _ts, item in out)


@pytest.mark.bpf
@pytest.mark.host   # the batch harvest is host-only for now (test_batch.py)
def test_a_batch_trace_prints_by_plans_what_the_printer_prints(progs: Path) -> None:
    workload = Workload(progs)
    stream = io.StringIO()
    printer = TextPrinter(stream)
    plans = TextPlans(printer)
    records: list[Record] = []
    try:
        session = TraceSession(
            TraceOptions(latency=False, pids=[workload.pid],
                         spec=TopicSpec.parse("tick:tock:flood")),
            lambda record: (records.append(record), printer.write(record)),
            lines=plans)
        session.start()
        workload.record("flood", 997)
        workload.record("tick", 20)       # %s and %f: the Record path
        workload.record("tock", 50)
        session.close()
    finally:
        workload.process.kill()
        workload.process.wait()
    lines = stream.getvalue().splitlines()[1:]      # under the header
    ticks = [r for r in records if r.topic == "tick"]
    # The Record path: every tick, and the first entry of each other kind
    # (flood, tock) per ring CPU and entry CPU.
    assert plans.built >= 2 and len(ticks) == 20 and len(records) <= 20 + 2 * 2 * 2
    assert len(lines) == 997 + 20 + 50
    columns = [line.split(maxsplit=6) for line in lines]
    times = [float(column[0]) for column in columns]
    assert times == sorted(times) and times[0] == 0.0
    assert [c[6] for c in columns if c[4] == "flood"] == [
        f"flood {i}" for i in range(997)]
    assert [c[6] for c in columns if c[4] == "tock"] == [f"tock {i}" for i in range(50)]
    printed = {line for line in lines if " tick " in line}
    assert {format_record(r, origin_ns=printer.origin_ns,
                          topic_width=printer.topic_width) for r in ticks} == printed


@pytest.mark.bpf
@pytest.mark.host   # the batch harvest is host-only for now (test_batch.py)
def test_a_batch_trace_writes_by_plans_what_the_writer_writes(progs: Path,
                                                               tmp_path: Path) -> None:
    workload = Workload(progs)
    path = tmp_path / "trace.json"
    try:
        with open(path, "w") as stream:
            writer = JsonLinesWriter(stream)
            plans = JsonPlans(writer)
            session = TraceSession(
                TraceOptions(latency=False, pids=[workload.pid],
                             spec=TopicSpec.parse("tick:tock:flood")),
                writer.write, lines=plans)
            session.start()
            workload.record("flood", 997)      # within its 1024-entry ring
            workload.record("tick", 20)       # %s and %f: the Record path
            workload.record("tock", 50)
            session.close()
            writer.close(session.summaries())
    finally:
        workload.process.kill()
        workload.process.wait()
    lines = path.read_text().splitlines(keepends=True)
    values = [json.loads(line) for line in lines]
    records = [v for v in values if v["type"] == "record"]
    assert plans.built >= 2      # flood's and tock's
    for line, value in zip(lines, values, strict=True):
        if value["type"] != "record":
            continue
        fields = {key: value[key] for key in ("ts", "pid", "tid", "comm", "topic",
                                              "where", "message", "args", "cpu",
                                              "flags")}
        assert JsonPlans.render(Record(**fields)) == line
    by_topic = {topic: [r["args"][0] for r in records if r["topic"] == topic]
                for topic in ("flood", "tick", "tock")}
    assert by_topic == {"flood": list(range(997)), "tick": list(range(20)),
                        "tock": list(range(50))}
    assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)
    assert values[-1]["received"] == len(records) and values[-1]["lost"] == 0
