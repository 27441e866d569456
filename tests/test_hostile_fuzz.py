"""Fuzzing what a traced process controls, with hypothesis: the spec parser,
the printf renderer, USDT argument specs, the ELF/notes reader, the share
file reader and the snapshot reader raise only their one error type (a
one-line message), never anything else, and stay bounded.

`make test` runs few examples; `make fuzz` sets RECORDER_FUZZ_EXAMPLES high.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recorder_tracer.decode.render import FIELD_MAX, format_message
from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.decode.usdt_args import parse_arguments, parse_formats
from recorder_tracer.errors import TracerError
from recorder_tracer.output.text import TextPrinter
from recorder_tracer.postmortem.snapshot_file import (
    json_record,
    print_snapshot,
    read_snapshot,
)
from recorder_tracer.target import shm
from recorder_tracer.target.elf import ElfFile, ElfFormatError
from recorder_tracer.target.notes import NotElfError, _cached_probes

EXAMPLES = int(os.environ.get("RECORDER_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])

ARGS = st.lists(st.one_of(st.integers(-(2**63), 2**64 - 1), st.floats(),
                          st.text(max_size=300), st.none()), max_size=12)
FORMAT_CHARACTERS = "%-+ #0'.*123456789hlLqjztdiouxXcspfeEgGaAn\x1b\r\n "
FORMATS = st.text(alphabet=st.sampled_from(list(FORMAT_CHARACTERS)), max_size=80)


@FUZZ
@given(FORMATS, ARGS)
def test_renderer_is_total_and_bounded(fmt: str, args: list) -> None:
    message = format_message(fmt, args)
    longest = max((len(a) for a in args if isinstance(a, str)), default=0)
    assert len(message) <= len(fmt) + (fmt.count("%") + 1) * (FIELD_MAX + longest + 400)


@FUZZ
@given(st.text(max_size=60))
def test_spec_parser_raises_only_tracer_error(text: str) -> None:
    try:
        spec = TopicSpec.parse(text)
    except TracerError as error:
        assert "\n" not in str(error).strip()
        return
    spec.armed("some_topic")


@FUZZ
@given(st.text(max_size=120))
def test_usdt_argument_specs_parse_or_refuse(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_arguments(text)
    with contextlib.suppress(ValueError):
        parse_formats(text)


ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")


def elf_bytes(draw_fields: tuple, tail: bytes) -> bytes:
    (shoff, shentsize, shnum, shstrndx, phoff, phentsize, phnum) = draw_fields
    ident = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    return ELF_HEADER.pack(ident, 3, 62, 1, 0, phoff, shoff, 0, 64, phentsize,
                           phnum, shentsize, shnum, shstrndx) + tail


OFFSETS = st.one_of(st.integers(0, 4096), st.just(2**62), st.integers(0, 2**64 - 1))
SMALL = st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 1, 64, 0xFFFF]))


@FUZZ
@given(st.tuples(OFFSETS, SMALL, SMALL, SMALL, OFFSETS, SMALL, SMALL),
       st.binary(max_size=2048))
def test_elf_and_notes_reader_raise_only_format_errors(fields: tuple,
                                                       tail: bytes) -> None:
    data = elf_bytes(fields, tail)
    with contextlib.suppress(ElfFormatError):
        ElfFile(io.BytesIO(data))
    with contextlib.suppress(NotElfError):
        _cached_probes((0, hash(data), 0, len(data)), io.BytesIO(data), "fuzz")


@FUZZ
@given(st.binary(max_size=4096), st.booleans())
def test_share_reader_raises_only_tracer_error(body: bytes, valid_header: bool) -> None:
    header = b""
    if valid_header:
        header = (shm.BLOCK.pack(shm.BLOCK_MAGIC, shm.KIND_HEADER, 4096, 0)
                  .ljust(64, b"\0")
                  + shm.FILE_HEADER.pack(shm.SHARE_MAGIC, 1, 144, 2**31 - 1, 4096,
                                         0, 0, b"x", b"/x"))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.1.recorder"
        path.write_bytes(header + body)
        try:
            share = shm.open_share(path)
        except TracerError:
            return
        shm.share_records(share, 16)


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=8), children,
                                               max_size=4)),
    max_leaves=20)
RECORD_KEYS = ["ts", "pid", "tid", "comm", "topic", "where", "message", "cpu", "args"]


@FUZZ
@given(st.dictionaries(st.sampled_from(RECORD_KEYS), JSON, max_size=9),
       st.dictionaries(st.sampled_from(["exe", "time", "signal_name", "exit", "shm",
                                        "fault_address", "pid", "time_ns"]),
                       JSON, max_size=4))
def test_snapshot_reader_accepts_only_what_it_can_show(record: dict,
                                                       top: dict) -> None:
    snapshot = {"kind": "recorder-snapshot", "version": 1, "pid": 1, "comm": "x",
                "time_ns": 1, "records": [record], **top}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.snapshot.json"
        path.write_text(json.dumps(snapshot))
        try:
            value = read_snapshot(path)
        except TracerError as error:
            assert "\n" not in str(error)
            return
    out = io.StringIO()
    print_snapshot(value, out)
    TextPrinter(io.StringIO()).write(json_record(value["records"][0]))
