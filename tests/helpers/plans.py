"""What the line plan tests share (tests/test_line_plans.py,
tests/test_chrome_plans.py): entries to render, values and formats that
try a plan's integer conversions, and this process as a traced one."""

from __future__ import annotations

import os

from recorder_tracer.abi import ENTRY
from recorder_tracer.decode.entry import RawEntry
from recorder_tracer.decode.record import Record
from recorder_tracer.kernel.batch_stream import BatchRecord
from recorder_tracer.session.armed import ArmedProcess
from recorder_tracer.session.harvest_records import harvest_record
from recorder_tracer.target.memory import ProcessImage, Topic

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


class OwnProcess:
    """This test process as an armed one with topic 3 (formats are read
    from its own memory), and the Record path of its entries."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.process = ArmedProcess(self.pid, "me", ProcessImage.of(self.pid),
                                    {3: Topic(3, "net", 64, 0, "", 0)}, [], set())
        self.processes = {self.pid: self.process}

    def record(self, cpu: int, pid: int, comm: bytes, raw: tuple[int, ...]) -> Record:
        return harvest_record(self.processes, {}, cpu, BatchRecord(
            pid, comm, RawEntry(*raw[:10], raw[10:22]), []))
