"""The controller's decode-to-file cost of `recorder trace --batch --json`,
without BPF: chunks of 16 entries like bench/rate_load.c's ("load %ld
%ld", two integers), from this process's own memory, through the session's
path to a JSON lines file. Both unpack each chunk as BatchStream does
(struct.iter_unpack, the entries' kinds told from their bytes, a look
for %s arguments), then:

  records   the Record path: one Record per entry (session/harvest_records),
            the reorder buffer, JsonLinesWriter.write (a flush per line),
            as batch mode ran before line plans
  plans     the chunk path: ChunkLines renders each entry by its line plan
            (output/json_plans.py), runs leave the reorder buffer as lines

`.venv/bin/python bench/json_lines_bench.py [--records N]` prints CPU
seconds (process time) and records/s per path, and checks both files are
byte-identical but for the header's clock anchor.
"""

from __future__ import annotations

import argparse
import ctypes
import filecmp
import os
import sys
import tempfile
import time
from pathlib import Path

from recorder_tracer.abi import ENTRY
from recorder_tracer.decode.entry import RawEntry
from recorder_tracer.decode.reorder import ReorderBuffer
from recorder_tracer.kernel.batch_stream import ENTRY_KIND, BatchRecord
from recorder_tracer.output.json_plans import ChunkLines, JsonPlans
from recorder_tracer.output.jsonl import JsonLinesWriter
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


def run(path: str, mode: str, batches: list[bytes]) -> float:
    pid = os.getpid()
    process = ArmedProcess(pid, "bench", ProcessImage.of(pid),
                           {1: Topic(1, "load", 1024, 0, "", 0)}, [], set())
    processes: dict[int, ArmedProcess] = {pid: process}

    def record(cpu: int, pid: int, comm: bytes, entry: tuple[int, ...]) -> object:
        return harvest_record(processes, {}, cpu, BatchRecord(
            pid, comm, RawEntry(*entry[:10], entry[10:22]), []))

    with open(path, "w") as stream:
        writer = JsonLinesWriter(stream, flush=True)
        plans = JsonPlans(writer) if mode == "plans" else None
        reorder = ReorderBuffer(writer.write,
                                lines=plans.write_lines if plans else None)
        lines = ChunkLines(plans, reorder.push_many, processes.get, record,
                           reorder.push_lines)
        started = time.process_time()
        for number, data in enumerate(batches):
            # As BatchStream._deliver_chunk: unpacked at once, %s looked for.
            batch = list(ENTRY.iter_unpack(data))
            one_kind = len(set(ENTRY_KIND.iter_unpack(data))) == 1
            if any(e[4] & ~(e[4] << 1) & 0xAAAAAA
                   for e in batch[:1 if one_kind else None]):
                raise AssertionError("no %s argument here")
            if mode == "plans":
                lines.on_chunk(1, pid, b"bench", batch, one_kind)
            else:
                for entry in batch:
                    reorder.push(record(1, pid, b"bench", entry))
            if number % 64 == 63:       # a flush every 1,024 records
                reorder.flush(batch[-1][0])
        reorder.flush_all()
        writer.close([])
        return time.process_time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    arguments = parser.parse_args()
    batches = chunks(arguments.records)
    with tempfile.TemporaryDirectory() as directory:
        files = {}
        for mode in ("records", "plans"):
            files[mode] = os.path.join(directory, f"{mode}.json")
            seconds = run(files[mode], mode, batches)
            print(f"{mode:8} {arguments.records:,} records in {seconds:.2f} s CPU: "
                  f"{arguments.records / seconds:,.0f} records/s")
        for path in files.values():     # the header carries the clock anchor
            lines = Path(path).read_text().splitlines(keepends=True)
            Path(path).write_text("".join(lines[1:]))
        same = filecmp.cmp(files["records"], files["plans"], shallow=False)
        print("identical output" if same else "OUTPUT DIFFERS")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
