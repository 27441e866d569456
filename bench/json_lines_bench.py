"""The controller's decode-to-file cost of `recorder trace --batch` (JSON
lines by default; `--format text` or `chrome`), without BPF: chunks of 16
entries like bench/rate_load.c's ("load %ld %ld", two integers), from this
process's own memory, through the session's path to a file. Both unpack
each chunk as BatchStream does (struct.iter_unpack, the entries' kinds
told from their bytes, a look for %s arguments), then:

  records   the Record path: one Record per entry (session/harvest_records),
            the reorder buffer, the writer's write (JSON: a flush per
            line), as batch mode ran before line plans
  plans     the chunk path: ChunkLines renders each entry by its line plan
            (output/json_plans.py, text_plans.py, chrome_plans.py), runs
            leave the reorder buffer as lines

`.venv/bin/python bench/json_lines_bench.py [--records N] [--format F]`
prints CPU seconds (process time) and records/s per path, and checks both
files are byte-identical (one clock anchor for both).
"""

from __future__ import annotations

import argparse
import ctypes
import filecmp
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, TextIO

from recorder_tracer.abi import ENTRY
from recorder_tracer.decode.chunk_kind import chunk_of_one_kind
from recorder_tracer.decode.entry import RawEntry
from recorder_tracer.decode.reorder import ReorderBuffer
from recorder_tracer.kernel.batch_stream import BatchRecord
from recorder_tracer.output.chrome import ChromeTraceWriter
from recorder_tracer.output.chrome_plans import ChromePlans
from recorder_tracer.output.json_plans import ChunkLines, JsonPlans
from recorder_tracer.output.jsonl import JsonLinesWriter
from recorder_tracer.output.text import TextPrinter
from recorder_tracer.output.text_plans import TextPlans
from recorder_tracer.session.armed import ArmedProcess
from recorder_tracer.session.harvest_records import harvest_record
from recorder_tracer.target.memory import ProcessImage, Topic

FORMAT = ctypes.create_string_buffer(b"load %ld %ld")
WHERE = ctypes.create_string_buffer(b"bench/rate_load.c:36")
CHUNK = 16


def chunks(count: int) -> list[bytes]:
    """`count` entries, packed in chunks of 16 as a chunk message has them."""
    fmt, where = ctypes.addressof(FORMAT), ctypes.addressof(WHERE)
    packed = [ENTRY.pack(1_000_000 + 2_000 * i, i + 1, os.getpid(), 1, 0, 0, 2, 0,
                         fmt, where, i, i & 1023, *[0] * 10) for i in range(count)]
    return [b"".join(packed[i:i + CHUNK]) for i in range(0, count, CHUNK)]


# The sinks `recorder trace` writes, each with its line plans.
FORMATS: dict[str, tuple[Callable[[TextIO], Any], Callable[[Any], Any]]] = {
    "json": (lambda stream: JsonLinesWriter(stream, flush=True), JsonPlans),
    "text": (lambda stream: TextPrinter(stream), TextPlans),
    "chrome": (ChromeTraceWriter, ChromePlans),
}
ANCHOR = {"clock": "CLOCK_MONOTONIC", "monotonic_ns": 1, "wall_ns": 2,
          "wall_offset_ns": 1}      # both files alike


def run(path: str, mode: str, batches: list[bytes], output: str = "json") -> float:
    pid = os.getpid()
    process = ArmedProcess(pid, "bench", ProcessImage.of(pid),
                           {1: Topic(1, "load", 1024, 0, "", 0)}, [], set())
    processes: dict[int, ArmedProcess] = {pid: process}

    def record(cpu: int, pid: int, comm: bytes, entry: tuple[int, ...]) -> object:
        return harvest_record(processes, {}, cpu, BatchRecord(
            pid, comm, RawEntry(*entry[:10], entry[10:22]), []))

    with open(path, "w") as stream:
        make_writer, make_plans = FORMATS[output]
        writer = make_writer(stream)
        writer.anchor = ANCHOR
        plans = make_plans(writer) if mode == "plans" else None
        reorder = ReorderBuffer(writer.write,
                                lines=plans.write_lines if plans else None)
        lines = ChunkLines(plans, reorder.push_many, processes.get, record,
                           reorder.push_lines)
        started = time.process_time()
        for number, data in enumerate(batches):
            # As BatchStream._deliver_chunk: kinds told, %s looked for, a
            # chunk of one kind left in its bytes.
            one_kind = chunk_of_one_kind(data)
            batch = None if one_kind else list(ENTRY.iter_unpack(data))
            if any(e[4] & ~(e[4] << 1) & 0xAAAAAA
                   for e in batch or [ENTRY.unpack_from(data)] * one_kind):
                raise AssertionError("no %s argument here")
            if mode == "plans":
                lines.on_chunk(1, pid, b"bench", batch, one_kind, memoryview(data))
            else:
                batch = list(ENTRY.iter_unpack(data))
                for entry in batch:
                    reorder.push(record(1, pid, b"bench", entry))
            if number % 64 == 63:       # a flush every 1,024 records
                reorder.flush(ENTRY.unpack_from(data, len(data) - ENTRY.size)[0])
        reorder.flush_all()
        writer.close([])
        return time.process_time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--format", choices=sorted(FORMATS), default="json")
    arguments = parser.parse_args()
    batches = chunks(arguments.records)
    with tempfile.TemporaryDirectory() as directory:
        files = {}
        for mode in ("records", "plans"):
            files[mode] = os.path.join(directory, f"{mode}.json")
            seconds = run(files[mode], mode, batches, arguments.format)
            print(f"{mode:8} {arguments.records:,} records in {seconds:.2f} s CPU: "
                  f"{arguments.records / seconds:,.0f} records/s")
        same = filecmp.cmp(files["records"], files["plans"], shallow=False)
        print("identical output" if same else "OUTPUT DIFFERS")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
